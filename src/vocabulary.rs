//! The words every layer shares, and that use nothing of the crate: [`QoS`], [`Protocol`],
//! [`Secret`] and [`MessageId`]. Each is parsed once where it enters (serde for the
//! configuration and the state file, clap for the command line) and travels typed from
//! there, so no layer re-parses a number with a fallback.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Quality of service, ordered so that `min` caps a requested level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// At most once.
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The level as its wire number.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

impl TryFrom<u8> for QoS {
    type Error = u8;

    fn try_from(value: u8) -> Result<Self, u8> {
        match value {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            other => Err(other),
        }
    }
}

impl fmt::Display for QoS {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u8())
    }
}

/// As its wire number.
impl Serialize for QoS {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(self.as_u8())
    }
}

/// From its wire number, 0, 1 or 2; anything else is an error, not a fallback.
impl<'de> Deserialize<'de> for QoS {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u8::deserialize(deserializer)?;
        QoS::try_from(n).map_err(|n| serde::de::Error::custom(format!("QoS {n} is not 0, 1 or 2")))
    }
}

/// MQTT protocol version spoken on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.
    V5,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        })
    }
}

/// A secret that never shows up in `Debug` output, logs or `check-config`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The secret itself, for the one place that needs it (the CONNECT packet).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Opaque handle of an inbound message, assigned by the MQTT session and echoed back by the
/// protocol in its actions so the session can acknowledge the right message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_parses_its_wire_number_and_nothing_else() {
        for (n, qos) in [
            (0, QoS::AtMostOnce),
            (1, QoS::AtLeastOnce),
            (2, QoS::ExactlyOnce),
        ] {
            assert_eq!(serde_json::from_str::<QoS>(&n.to_string()).unwrap(), qos);
            assert_eq!(serde_json::to_string(&qos).unwrap(), n.to_string());
        }
        for bad in ["3", "7", "-1", "1.5", "true", "\"2\""] {
            assert!(serde_json::from_str::<QoS>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_secret_never_shows_in_debug() {
        let s = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(s.expose(), "hunter2");
    }
}
