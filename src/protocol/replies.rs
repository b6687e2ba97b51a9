//! What the responder answers: the reply table, and what to do with a command not in it.

/// What to do with a command that is not in the reply table (`session.unknown_command`,
/// with `unknown_reply` folded in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnknownCommand {
    /// Log at WARN and send nothing.
    Ignore,
    /// Log at WARN and answer with this payload.
    Reply(String),
}

/// Command → reply payload, in the order of the configuration's `[replies]`. Commands are
/// valid single topic levels (they are rendered into reply topics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTable(pub Vec<(String, String)>);

impl ReplyTable {
    /// The reply for `command`, if the table has one.
    pub fn reply(&self, command: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(c, _)| c == command)
            .map(|(_, r)| r.as_str())
    }

    /// SPEC §2's default table: CMD1→Apple … CMD7→Toy.
    pub fn seed() -> ReplyTable {
        let pairs = [
            ("CMD1", "Apple"),
            ("CMD2", "Cat"),
            ("CMD3", "Dog"),
            ("CMD4", "Rat"),
            ("CMD5", "Boy"),
            ("CMD6", "Girl"),
            ("CMD7", "Toy"),
        ];
        ReplyTable(
            pairs
                .iter()
                .map(|(c, r)| (c.to_string(), r.to_string()))
                .collect(),
        )
    }
}
