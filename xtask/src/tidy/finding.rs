//! What a rule reports: a place, the rule's name and what is wrong.

use std::fmt;

/// One breach of a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Finding {
    /// `file:line`, or a file when no line applies.
    pub place: String,
    /// The rule's name, as the module docs of `tidy` list it.
    pub rule: &'static str,
    /// What is wrong and what to do; may span several lines.
    pub message: String,
}

impl Finding {
    /// A finding at `file:line` (no line when `line` is 0).
    pub(crate) fn at(file: &str, line: usize, rule: &'static str, message: String) -> Self {
        let place = if line == 0 {
            file.to_owned()
        } else {
            format!("{file}:{line}")
        };
        Finding {
            place,
            rule,
            message,
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: [{}] {}", self.place, self.rule, self.message)
    }
}
