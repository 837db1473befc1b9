//! Cutting a list into pages (`Vm.List`, `Node.List`, `Vm.Scale`'s answer).
//!
//! Invariant: a page holds at most the request's limit (at most
//! [`limits::PAGE_ITEMS_MAX`]) and at most [`limits::PAGE_BYTES_MAX`]
//! encoded bytes of items, and at least one item while any remain, so a
//! list always advances and every answer fits gRPC's 4 MiB. A page's token
//! names the last key it holds; the next page starts strictly after it,
//! so an item present throughout a listing appears exactly once.

use blixard_api::validate::{self, limits};
use tonic::Status;

/// A list's key: what its page tokens name.
pub trait PageKey: Sized + Clone {
    /// Tells one list's tokens from another's.
    const PREFIX: &'static str;
    fn parse(text: &str) -> Option<Self>;
    fn show(&self) -> String;
}

/// VMs, by name.
impl PageKey for String {
    const PREFIX: &'static str = "vm/";
    fn parse(text: &str) -> Option<Self> {
        validate::vm_name(text).ok().map(|()| text.to_string())
    }
    fn show(&self) -> String {
        self.clone()
    }
}

/// Nodes, by id.
impl PageKey for u64 {
    const PREFIX: &'static str = "node/";
    fn parse(text: &str) -> Option<Self> {
        text.parse().ok()
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// Where a page starts and how many items it may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest<K> {
    /// The page starts strictly after this key (`None`: at the start).
    pub after: Option<K>,
    pub items_max: usize,
}

impl<K: PageKey> PageRequest<K> {
    /// The request's limit and token, checked: a token this list did not
    /// give is refused; a limit of 0 is the default and a larger one than
    /// the maximum is lowered to it.
    pub fn new(limit: u32, page_token: &str) -> Result<Self, Status> {
        let after = if page_token.is_empty() {
            None
        } else {
            let key = page_token.strip_prefix(K::PREFIX).and_then(K::parse);
            Some(key.ok_or_else(|| {
                Status::invalid_argument(format!(
                    "invalid page_token {}: not a token this list gave (start again with an empty one)",
                    validate::echo(page_token)
                ))
            })?)
        };
        let items_max = match limit as usize {
            0 => limits::PAGE_ITEMS_DEFAULT,
            n => n.min(limits::PAGE_ITEMS_MAX),
        };
        Ok(PageRequest { after, items_max })
    }

    /// The page of `items` (in key order, starting after `self.after`) and
    /// the next page's token (empty when nothing is left). Items are
    /// taken from the iterator only as far as the page reaches.
    pub fn cut<T: prost::Message>(
        &self,
        items: impl IntoIterator<Item = (K, T)>,
    ) -> (Vec<T>, String) {
        let mut items = items.into_iter().peekable();
        let mut page = Vec::new();
        let mut bytes = 0;
        let mut last = None;
        while let Some((_, item)) = items.peek() {
            // A repeated field's entry: the item plus its tag and length.
            let len = item.encoded_len() + 1 + prost::length_delimiter_len(item.encoded_len());
            if page.len() == self.items_max
                || (!page.is_empty() && bytes + len > limits::PAGE_BYTES_MAX)
            {
                break;
            }
            let Some((key, item)) = items.next() else {
                break;
            };
            bytes += len;
            page.push(item);
            last = Some(key);
        }
        let token = match (items.peek(), last) {
            (Some(_), Some(last)) => format!("{}{}", K::PREFIX, last.show()),
            _ => String::new(),
        };
        (page, token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blixard_api::pb;

    fn vm(name: &str, cmdline_len: usize) -> (String, pb::VmInfo) {
        let spec = pb::VmSpec {
            name: name.into(),
            runner: Some(pb::RunnerSource {
                source: Some(pb::runner_source::Source::Kernel(pb::KernelRunner {
                    cmdline: "x".repeat(cmdline_len),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        };
        let info = pb::VmInfo {
            spec: Some(spec),
            ..Default::default()
        };
        (name.into(), info)
    }

    fn names(page: &[pb::VmInfo]) -> Vec<String> {
        page.iter()
            .map(|vm| vm.spec.as_ref().unwrap().name.clone())
            .collect()
    }

    #[test]
    fn pages_follow_each_other_by_token_and_end_with_an_empty_one() {
        let all: Vec<_> = (0..5).map(|i| vm(&format!("vm-{i}"), 0)).collect();
        let mut request = PageRequest::<String>::new(2, "").unwrap();
        let mut seen = Vec::new();
        loop {
            let from = all
                .iter()
                .filter(|(name, _)| request.after.as_ref().is_none_or(|a| name > a))
                .cloned();
            let (page, token) = request.cut(from);
            assert!(page.len() <= 2);
            seen.extend(names(&page));
            if token.is_empty() {
                break;
            }
            request = PageRequest::new(2, &token).unwrap();
        }
        assert_eq!(seen, ["vm-0", "vm-1", "vm-2", "vm-3", "vm-4"]);
        // Exactly full: no token pointing at an empty page.
        let (page, token) = PageRequest::<String>::new(5, "").unwrap().cut(all);
        assert_eq!((page.len(), token.as_str()), (5, ""));
    }

    #[test]
    fn a_page_is_cut_at_its_byte_bound_but_holds_at_least_one_item() {
        let cmdline = limits::PAGE_BYTES_MAX / 3;
        let all: Vec<_> = (0..4).map(|i| vm(&format!("vm-{i}"), cmdline)).collect();
        let request = PageRequest::<String>::new(0, "").unwrap();
        let (page, token) = request.cut(all.clone());
        assert_eq!(names(&page), ["vm-0", "vm-1"]);
        assert_eq!(token, "vm/vm-1");
        let encoded = prost::Message::encoded_len(&pb::ListVmsResponse {
            vms: page,
            ..Default::default()
        });
        assert!(encoded <= limits::PAGE_BYTES_MAX, "{encoded}");
        // One item larger than the bound still goes out alone.
        let huge = vec![vm("a", limits::PAGE_BYTES_MAX), vm("b", 0)];
        let (page, token) = request.cut(huge);
        assert_eq!(
            (names(&page), token.as_str()),
            (vec!["a".to_string()], "vm/a")
        );
    }

    #[test]
    fn limits_default_and_cap_and_foreign_tokens_are_refused() {
        let items = |limit| PageRequest::<u64>::new(limit, "").unwrap().items_max;
        assert_eq!(items(0), limits::PAGE_ITEMS_DEFAULT);
        assert_eq!(items(7), 7);
        assert_eq!(items(u32::MAX), limits::PAGE_ITEMS_MAX);
        assert_eq!(
            PageRequest::<u64>::new(0, "node/42").unwrap().after,
            Some(42)
        );
        let long = format!("vm/{}", "a".repeat(100_000));
        for bad in ["vm/a", "node/", "node/x", "42", long.as_str()] {
            let status = PageRequest::<u64>::new(0, bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains("page_token"), "{status:?}");
            assert!(status.message().len() < 200, "{}", status.message().len());
        }
        for bad in ["node/1", "vm/Not_A_Name", "vm/"] {
            assert!(PageRequest::<String>::new(0, bad).is_err(), "{bad}");
        }
    }
}
