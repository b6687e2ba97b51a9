//! Topic names, topic levels and the `{placeholder}` templates that build them.
//!
//! Everything a peer controls (the UUID, a command) ends up inside a topic the daemon
//! subscribes or publishes to, so every rendered topic is checked here: a hostile value must
//! never widen a subscription (`+`, `#`) or smuggle in an extra level (`/`).

use std::fmt;

/// Longest UUID (or other single level) a peer may hand us, in bytes.
pub const MAX_LEVEL_BYTES: usize = 256;

/// Why a topic or a topic level was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The string is empty.
    #[error("must not be empty")]
    Empty,
    /// A wildcard or NUL character appears in it.
    #[error("must not contain '+', '#' or NUL")]
    Wildcard,
    /// A single level contains the level separator.
    #[error("must be a single topic level (no '/')")]
    Separator,
    /// A single level is longer than [`MAX_LEVEL_BYTES`].
    #[error("must be at most {MAX_LEVEL_BYTES} bytes")]
    TooLong,
    /// The whole topic is longer than MQTT allows (65,535 bytes).
    #[error("must be at most 65535 bytes")]
    TopicTooLong,
}

/// Checks a topic name the daemon will publish or subscribe to: not empty, no wildcard, no
/// NUL, at most 65,535 bytes (the MQTT string limit).
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > usize::from(u16::MAX) {
        return Err(TopicError::TopicTooLong);
    }
    if topic.contains(['+', '#', '\0']) {
        return Err(TopicError::Wildcard);
    }
    Ok(())
}

/// Checks a value that must form exactly one topic level (a UUID, a user ID, a command).
pub fn validate_level(level: &str) -> Result<(), TopicError> {
    if level.is_empty() {
        return Err(TopicError::Empty);
    }
    if level.contains(['+', '#', '\0']) {
        return Err(TopicError::Wildcard);
    }
    if level.contains('/') {
        return Err(TopicError::Separator);
    }
    if level.len() > MAX_LEVEL_BYTES {
        return Err(TopicError::TooLong);
    }
    Ok(())
}

/// A placeholder that may appear in a topic template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// `{user_id}`: `session.user_id`.
    UserId,
    /// `{uuid}`: the UUID the peer handed out.
    Uuid,
    /// `{command}`: the command being answered.
    Command,
}

impl Var {
    fn name(self) -> &'static str {
        match self {
            Var::UserId => "user_id",
            Var::Uuid => "uuid",
            Var::Command => "command",
        }
    }

    fn parse(name: &str) -> Option<Var> {
        [Var::UserId, Var::Uuid, Var::Command]
            .into_iter()
            .find(|v| v.name() == name)
    }
}

/// Why a template was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{name}` is not a placeholder this template may use.
    #[error("unknown placeholder {{{0}}} (allowed here: {1})")]
    UnknownPlaceholder(String, String),
    /// A `{` without its `}` or the other way round.
    #[error("unbalanced '{{' or '}}'")]
    Unbalanced,
    /// The template, rendered with sample values, is not a valid topic.
    #[error("{0}")]
    Topic(TopicError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

/// A topic template such as `{uuid}/{command}`, parsed once at configuration time.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// The values placeholders are rendered with; a missing value renders as an empty string,
/// which validation then rejects where it would matter.
#[derive(Debug, Default, Clone, Copy)]
pub struct Vars<'a> {
    /// Value of `{user_id}`.
    pub user_id: &'a str,
    /// Value of `{uuid}`.
    pub uuid: &'a str,
    /// Value of `{command}`.
    pub command: &'a str,
}

impl Template {
    /// Parses `source`, accepting only the placeholders in `allowed`, and checks that it
    /// renders to a valid topic with sample values.
    pub fn parse(source: &str, allowed: &[Var]) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = source;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Text(rest.to_owned()));
                    rest = "";
                }
                Some(i) if rest.as_bytes()[i] == b'}' => return Err(TemplateError::Unbalanced),
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Text(rest[..i].to_owned()));
                    }
                    let close = rest[i..].find('}').ok_or(TemplateError::Unbalanced)? + i;
                    let name = &rest[i + 1..close];
                    if name.contains('{') {
                        return Err(TemplateError::Unbalanced);
                    }
                    let var = Var::parse(name)
                        .filter(|v| allowed.contains(v))
                        .ok_or_else(|| {
                            let names: Vec<String> = allowed
                                .iter()
                                .map(|v| format!("{{{}}}", v.name()))
                                .collect();
                            let names = if names.is_empty() {
                                "none".to_owned()
                            } else {
                                names.join(", ")
                            };
                            TemplateError::UnknownPlaceholder(name.to_owned(), names)
                        })?;
                    parts.push(Part::Var(var));
                    rest = &rest[close + 1..];
                }
            }
        }
        let template = Template {
            source: source.to_owned(),
            parts,
        };
        let sample = Vars {
            user_id: "u",
            uuid: "u",
            command: "c",
        };
        validate_topic(&template.render(&sample)).map_err(TemplateError::Topic)?;
        Ok(template)
    }

    /// Renders the template. The caller checks the result with [`validate_topic`] when any
    /// value came from a peer.
    pub fn render(&self, vars: &Vars<'_>) -> String {
        let mut out = String::with_capacity(self.source.len() + 40);
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(Var::UserId) => out.push_str(vars.user_id),
                Part::Var(Var::Uuid) => out.push_str(vars.uuid),
                Part::Var(Var::Command) => out.push_str(vars.command),
            }
        }
        out
    }

    /// Renders and validates in one step: what to use for anything a peer influenced.
    pub fn render_checked(&self, vars: &Vars<'_>) -> Result<String, TopicError> {
        let topic = self.render(vars);
        validate_topic(&topic)?;
        Ok(topic)
    }

    /// The template as written in the configuration.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the template uses `var`.
    pub fn uses(&self, var: Var) -> bool {
        self.parts.contains(&Part::Var(var))
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(validate_level("6533a9a8-5b52"), Ok(()));
        assert_eq!(validate_level(""), Err(TopicError::Empty));
        assert_eq!(validate_level("a+"), Err(TopicError::Wildcard));
        assert_eq!(validate_level("#"), Err(TopicError::Wildcard));
        assert_eq!(validate_level("a\0b"), Err(TopicError::Wildcard));
        assert_eq!(validate_level("a/b"), Err(TopicError::Separator));
        assert_eq!(validate_level(&"x".repeat(256)), Ok(()));
        assert_eq!(validate_level(&"x".repeat(257)), Err(TopicError::TooLong));
    }

    #[test]
    fn topics() {
        assert_eq!(validate_topic("a/b/c"), Ok(()));
        assert_eq!(validate_topic(""), Err(TopicError::Empty));
        assert_eq!(validate_topic("a/+/c"), Err(TopicError::Wildcard));
        assert_eq!(validate_topic("a/#"), Err(TopicError::Wildcard));
    }

    #[test]
    fn templates_render() {
        let t =
            Template::parse("{uuid}/{command}", &[Var::UserId, Var::Uuid, Var::Command]).unwrap();
        let vars = Vars {
            user_id: "7",
            uuid: "abc",
            command: "CMD4",
        };
        assert_eq!(t.render(&vars), "abc/CMD4");
        assert!(t.uses(Var::Command));
        assert!(!t.uses(Var::UserId));
        let lit = Template::parse("login", &[Var::UserId]).unwrap();
        assert_eq!(lit.render(&vars), "login");
    }

    #[test]
    fn templates_reject() {
        let allowed = [Var::UserId];
        assert!(matches!(
            Template::parse("{uuid}/x", &allowed),
            Err(TemplateError::UnknownPlaceholder(name, _)) if name == "uuid"
        ));
        assert_eq!(
            Template::parse("{user_id", &allowed),
            Err(TemplateError::Unbalanced)
        );
        assert_eq!(
            Template::parse("a}b", &allowed),
            Err(TemplateError::Unbalanced)
        );
        assert_eq!(
            Template::parse("", &allowed),
            Err(TemplateError::Topic(TopicError::Empty))
        );
        assert_eq!(
            Template::parse("a/+", &allowed),
            Err(TemplateError::Topic(TopicError::Wildcard))
        );
    }

    #[test]
    fn hostile_values_are_caught_after_rendering() {
        let t = Template::parse("{uuid}/{command}", &[Var::Uuid, Var::Command]).unwrap();
        let vars = Vars {
            uuid: "abc",
            command: "#",
            ..Vars::default()
        };
        assert_eq!(t.render_checked(&vars), Err(TopicError::Wildcard));
    }
}
