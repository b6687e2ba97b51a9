// aedes (an independent MQTT 3.1.1 broker, npm) for the interop tests in tests/interop.rs.
//
// Usage: node tests/brokers/aedes.js PORT
// Listens on 127.0.0.1:PORT only, logs one line per client event to stdout (the harness
// keeps it in a file), and exits 0 on SIGTERM/SIGINT. Installed by `.ci/run` with
// `npm ci --prefix tests/brokers`.

import net from 'node:net'
import { readFileSync } from 'node:fs'
import { Aedes } from 'aedes'

const port = Number.parseInt(process.argv[2] ?? '', 10)
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node aedes.js PORT')
  process.exit(2)
}

// aedes does not export its package.json: read the installed one for the version line.
const { version } = JSON.parse(
  readFileSync(new URL('./node_modules/aedes/package.json', import.meta.url), 'utf8')
)
const broker = await Aedes.createBroker()
const server = net.createServer(broker.handle)

broker.on('client', (c) => console.log(`client connected: ${c.id}`))
broker.on('clientDisconnect', (c) => console.log(`client disconnected: ${c.id}`))
broker.on('clientError', (c, e) => console.log(`client error: ${c.id}: ${e.message}`))
broker.on('connectionError', (c, e) => console.log(`connection error: ${c?.id}: ${e.message}`))

server.on('error', (e) => {
  // A port taken between the harness picking it and us binding it: exit, the harness retries.
  console.error(`aedes: ${e.message}`)
  process.exit(1)
})

server.listen(port, '127.0.0.1', () => {
  console.log(`aedes ${version} listening on 127.0.0.1:${port}`)
})

let stopping = false
function stop () {
  if (stopping) return
  stopping = true
  // Stop accepting, then end the broker (which closes its clients) and exit.
  server.close()
  broker.close(() => process.exit(0))
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
