//! Placement rules a VM carries: hard constraints, soft preferences,
//! anti-affinity, strategy, and what happens when its node is lost.
//!
//! Invariant: a rule parses from exactly the text it displays as, so what
//! an operator typed is what `vm status` shows and what the scheduler
//! evaluates.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How to compare a node attribute with a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Eq,
    Ne,
    Ge,
    Le,
    Gt,
    Lt,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Ge => ">=",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Lt => "<",
        }
    }
}

/// `key OP value` over a node's attributes: its labels plus the built-ins
/// `node` (id), `memory` (MiB total), `vcpus` and `accel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub key: String,
    pub op: Op,
    pub value: String,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.key, self.op.as_str(), self.value)
    }
}

/// Why a rule did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid placement rule {text:?}: {detail}")]
pub struct RuleError {
    /// At most a short prefix of the rule's text.
    pub text: String,
    pub detail: String,
}

const KEY_CHARS_MAX: usize = 63;
const VALUE_CHARS_MAX: usize = 253;

impl FromStr for Rule {
    type Err = RuleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |detail: &str| RuleError {
            text: crate::validate::echo(text),
            detail: detail.into(),
        };
        // Two-character operators first so ">=" is not read as ">".
        let (position, op) = [
            ("!=", Op::Ne),
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("=", Op::Eq),
            (">", Op::Gt),
            ("<", Op::Lt),
        ]
        .iter()
        .find_map(|(token, op)| text.find(token).map(|at| ((at, token.len()), *op)))
        .ok_or_else(|| error("expected KEY=VALUE, KEY!=VALUE, KEY>=N, KEY<=N, KEY>N or KEY<N"))?;
        let key = text[..position.0].trim();
        let value = text[position.0 + position.1..].trim();
        if key.is_empty() || key.len() > KEY_CHARS_MAX {
            return Err(error("the key must be 1 to 63 characters"));
        }
        if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        {
            return Err(error("the key may hold only letters, digits and - _ . /"));
        }
        if value.is_empty() || value.len() > VALUE_CHARS_MAX {
            return Err(error("the value must be 1 to 253 characters"));
        }
        if value.contains(['=', '<', '>', '!', ',']) {
            return Err(error("the value may not contain = < > ! or ,"));
        }
        if matches!(op, Op::Ge | Op::Le | Op::Gt | Op::Lt) && value.parse::<f64>().is_err() {
            return Err(error("ordering comparisons need a number"));
        }
        Ok(Rule {
            key: key.into(),
            op,
            value: value.into(),
        })
    }
}

impl Rule {
    /// Parses a comma-separated list, e.g. `storage=nvme,memory>=4096`.
    pub fn parse_list(text: &str) -> Result<Vec<Rule>, RuleError> {
        text.split(',')
            .filter(|part| !part.trim().is_empty())
            .map(str::parse)
            .collect()
    }

    /// Whether a node with these attributes satisfies the rule. A missing
    /// attribute satisfies only `!=`.
    pub fn matches(&self, attributes: &BTreeMap<String, String>) -> bool {
        let Some(actual) = attributes.get(&self.key) else {
            return self.op == Op::Ne;
        };
        match self.op {
            Op::Eq => *actual == self.value,
            Op::Ne => *actual != self.value,
            ordering => {
                let (Ok(actual), Ok(wanted)) = (actual.parse::<f64>(), self.value.parse::<f64>())
                else {
                    return false;
                };
                match ordering {
                    Op::Ge => actual >= wanted,
                    Op::Le => actual <= wanted,
                    Op::Gt => actual > wanted,
                    Op::Lt => actual < wanted,
                    Op::Eq | Op::Ne => unreachable!("handled above"),
                }
            }
        }
    }
}

/// How the scheduler weighs free resources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Fill nodes up: fewer, fuller nodes.
    Binpack,
    /// Keep load even: most free resources first.
    #[default]
    Spread,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Binpack => "binpack",
            Strategy::Spread => "spread",
        }
    }
}

/// A strategy name that is neither `binpack` nor `spread`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown strategy {text:?} (expected binpack or spread)")]
pub struct StrategyError {
    /// At most a short prefix of what was given.
    pub text: String,
}

impl FromStr for Strategy {
    type Err = StrategyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "binpack" => Ok(Strategy::Binpack),
            "spread" => Ok(Strategy::Spread),
            other => Err(StrategyError {
                text: crate::validate::echo(other),
            }),
        }
    }
}

/// Where a VM may run and what it prefers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Hard: a node must satisfy every one.
    #[serde(default)]
    pub constraints: Vec<Rule>,
    /// Soft: nodes satisfying more of these score higher.
    #[serde(default)]
    pub preferences: Vec<Rule>,
    /// Hard: no two VMs of the same group on one node.
    #[serde(default)]
    pub anti_affinity_group: Option<String>,
    /// Soft: nodes already running VMs of this group score higher.
    #[serde(default)]
    pub affinity_group: Option<String>,
    #[serde(default)]
    pub strategy: Strategy,
}

/// What happens to a VM when its node stops answering. `None` fields take
/// the cluster defaults (see `Settings`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverPolicy {
    /// How long the node must be dead before the VM counts as lost.
    #[serde(default)]
    pub lost_after_ms: Option<u64>,
    /// Whether a lost VM is started on another node.
    #[serde(default)]
    pub replace: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn rules_round_trip_through_text() {
        for text in [
            "storage=nvme",
            "memory>=4096",
            "zone!=a",
            "vcpus<8",
            "x.y/z>1.5",
        ] {
            let rule: Rule = text.parse().unwrap();
            assert_eq!(rule.to_string(), text);
        }
        let list = Rule::parse_list("storage=nvme, memory>=4096").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].op, Op::Ge);
    }

    #[test]
    fn bad_rules_name_the_problem() {
        for (text, needle) in [
            ("storage", "expected KEY=VALUE"),
            ("=nvme", "key must be"),
            ("memory>=lots", "need a number"),
            ("a b=c", "letters, digits"),
            ("zone=", "value must be"),
        ] {
            let error = text.parse::<Rule>().unwrap_err();
            assert!(error.to_string().contains(needle), "{text}: {error}");
        }
    }

    #[test]
    fn matching() {
        let node = attributes(&[("storage", "nvme"), ("memory", "8192")]);
        assert!("storage=nvme".parse::<Rule>().unwrap().matches(&node));
        assert!("memory>=4096".parse::<Rule>().unwrap().matches(&node));
        assert!(!"memory>8192".parse::<Rule>().unwrap().matches(&node));
        assert!(!"gpu=a100".parse::<Rule>().unwrap().matches(&node));
        assert!("gpu!=a100".parse::<Rule>().unwrap().matches(&node));
        assert!(!"storage>1".parse::<Rule>().unwrap().matches(&node));
    }
}
