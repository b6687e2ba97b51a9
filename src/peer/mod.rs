//! The peer side of the protocol, for checking a responder: [`runner`] runs the pure
//! examiner (`protocol::examiner`) against a real broker; [`examine`] is the subcommand
//! that points it at a deployed device; [`demo`] runs the whole exchange on an
//! [`embedded_broker`] in one process; [`console`] is how both show it to a person.

pub mod console;
pub mod demo;
pub mod embedded_broker;
pub mod examine;
pub mod runner;
