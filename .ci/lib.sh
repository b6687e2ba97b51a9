# shellcheck shell=bash
# Shared helpers for the .ci scripts. Source it; do not run it.
#
# Rules every helper keeps: every wait is bounded by a deadline, processes are stopped by
# PID (never by name), and only 127.0.0.1 is used.

# The mosquitto binary (Debian puts it in /usr/sbin, not always on PATH).
mosquitto_bin() {
    command -v mosquitto 2>/dev/null || { [ -x /usr/sbin/mosquitto ] && echo /usr/sbin/mosquitto; }
}

# ci_install PACKAGE...: apt-get install as root or through sudo, quietly.
ci_install() {
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

# wait_for SECONDS WHAT COMMAND...: runs COMMAND every 0.1 s until it succeeds; fails with
# a message naming WHAT after SECONDS.
wait_for() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            echo "timed out after ${timeout}s waiting for $what" >&2
            return 1
        fi
        sleep 0.1
    done
}

# port_accepts PORT: something accepts TCP on 127.0.0.1:PORT.
port_accepts() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# pid_alive PID
pid_alive() {
    kill -0 "$1" 2>/dev/null
}

# pid_gone PID
pid_gone() {
    ! kill -0 "$1" 2>/dev/null
}

# stop_pid PID [SECONDS]: SIGTERM, wait up to SECONDS (default 10) for it to exit, then
# SIGKILL. Only for processes this script started (by their PID).
stop_pid() {
    local pid=$1 timeout=${2:-10}
    [ -n "$pid" ] || return 0
    pid_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    if ! wait_for "$timeout" "PID $pid to exit" pid_gone "$pid" 2>/dev/null; then
        echo "PID $pid did not exit within ${timeout}s of SIGTERM: SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        wait_for 5 "PID $pid to die" pid_gone "$pid" || true
    fi
}

# log_has FILE TEXT: FILE contains the fixed string TEXT.
log_has() {
    grep -qF -- "$2" "$1" 2>/dev/null
}

# start_mosquitto DIR [PASSWORD_FILE]: a mosquitto of our own on a free port of 127.0.0.1
# with its config and log in DIR (log_type all). Anonymous access, or with PASSWORD_FILE
# (made by mosquitto_passwd) only those users. Sets MOSQ_PID, MOSQ_PORT, MOSQ_LOG.
# Retries with another port when the one picked was taken in the meantime.
start_mosquitto() {
    local dir=$1 passwords=${2:-} auth bin attempt port
    if [ -n "$passwords" ]; then
        auth="allow_anonymous false
password_file $passwords"
    else
        auth="allow_anonymous true"
    fi
    bin="$(mosquitto_bin)" || {
        echo "mosquitto not found (apt-get install mosquitto)" >&2
        return 1
    }
    MOSQ_LOG="$dir/mosquitto.log"
    for attempt in 1 2 3 4 5; do
        port=$((20000 + RANDOM % 40000))
        port_accepts "$port" && continue
        cat >"$dir/mosquitto.conf" <<CONF
listener $port 127.0.0.1
$auth
persistence false
user root
log_dest file $MOSQ_LOG
log_type all
log_timestamp true
CONF
        : >"$MOSQ_LOG"
        "$bin" -c "$dir/mosquitto.conf" >"$dir/mosquitto.out" 2>&1 &
        MOSQ_PID=$!
        local deadline=$((SECONDS + 10))
        until port_accepts "$port"; do
            if pid_gone "$MOSQ_PID" || ((SECONDS >= deadline)); then
                break
            fi
            sleep 0.1
        done
        if pid_alive "$MOSQ_PID" && port_accepts "$port"; then
            # shellcheck disable=SC2034 # read by the sourcing script
            MOSQ_PORT=$port
            return 0
        fi
        stop_pid "$MOSQ_PID" 5
        echo "mosquitto did not start on port $port (attempt $attempt):" >&2
        cat "$dir/mosquitto.out" "$MOSQ_LOG" >&2 || true
    done
    echo "could not start mosquitto" >&2
    return 1
}
