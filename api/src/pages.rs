//! Following a paged list (`Vm.List`, `Node.List`) to its end.
//!
//! Invariant: [`follow`] returns only after a page with an empty
//! `next_page_token`, and every page before it advanced (held items and
//! a token not given before), so a server that repeats itself is an
//! error, not a loop.

use std::future::Future;

use tonic::Status;

use crate::pb;

/// One answer of a paged list.
pub trait Page {
    type Item;
    /// The page's items, the revision it was read at, and the token of the
    /// next page (empty on the last).
    fn into_parts(self) -> (Vec<Self::Item>, u64, String);
}

impl Page for pb::ListVmsResponse {
    type Item = pb::VmInfo;
    fn into_parts(self) -> (Vec<pb::VmInfo>, u64, String) {
        (self.vms, self.revision, self.next_page_token)
    }
}

impl Page for pb::ListNodesResponse {
    type Item = pb::NodeInfo;
    fn into_parts(self) -> (Vec<pb::NodeInfo>, u64, String) {
        (self.nodes, self.revision, self.next_page_token)
    }
}

/// Every item of a list, asking `fetch` for each page by its token (empty
/// for the first), and the revision the last page was read at.
pub async fn follow<P, F, Fut>(mut fetch: F) -> Result<(Vec<P::Item>, u64), Status>
where
    P: Page,
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<P, Status>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    let mut given = std::collections::HashSet::new();
    loop {
        let (page, revision, next) = fetch(token.clone()).await?.into_parts();
        if next.is_empty() {
            items.extend(page);
            return Ok((items, revision));
        }
        if page.is_empty() || !given.insert(next.clone()) {
            return Err(Status::internal(
                "the server's list did not advance (a page with no items, or a token it gave before)",
            ));
        }
        items.extend(page);
        token = next;
    }
}

/// Every VM (only group `group`'s members unless it is empty), listed by
/// `list` (a `VmClient::list` call), as one answer at the last page's
/// revision.
pub async fn all_vms<F, Fut>(group: &str, mut list: F) -> Result<pb::ListVmsResponse, Status>
where
    F: FnMut(pb::ListVmsRequest) -> Fut,
    Fut: Future<Output = Result<tonic::Response<pb::ListVmsResponse>, Status>>,
{
    let (vms, revision) = follow(|page_token| {
        let answer = list(pb::ListVmsRequest {
            limit: 0,
            page_token,
            group: group.to_string(),
        });
        async move { answer.await.map(tonic::Response::into_inner) }
    })
    .await?;
    Ok(pb::ListVmsResponse {
        vms,
        revision,
        next_page_token: String::new(),
    })
}

/// Every node, listed by `list` (a `NodeClient::list` call), as one answer
/// at the last page's revision.
pub async fn all_nodes<F, Fut>(mut list: F) -> Result<pb::ListNodesResponse, Status>
where
    F: FnMut(pb::ListNodesRequest) -> Fut,
    Fut: Future<Output = Result<tonic::Response<pb::ListNodesResponse>, Status>>,
{
    let (nodes, revision) = follow(|page_token| {
        let answer = list(pb::ListNodesRequest {
            limit: 0,
            page_token,
        });
        async move { answer.await.map(tonic::Response::into_inner) }
    })
    .await?;
    Ok(pb::ListNodesResponse {
        nodes,
        revision,
        next_page_token: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(names: &[&str], next: &str) -> pb::ListVmsResponse {
        pb::ListVmsResponse {
            vms: names
                .iter()
                .map(|name| pb::VmInfo {
                    spec: Some(pb::VmSpec {
                        name: name.to_string(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            revision: names.len() as u64,
            next_page_token: next.into(),
        }
    }

    fn names(vms: &[pb::VmInfo]) -> Vec<String> {
        vms.iter()
            .map(|vm| vm.spec.as_ref().unwrap().name.clone())
            .collect()
    }

    /// A tiny executor: the fetches below never wait.
    fn run<T>(future: impl Future<Output = T>) -> T {
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut context) {
                return out;
            }
        }
    }

    #[test]
    fn pages_are_followed_by_their_tokens_to_the_last() {
        let mut asked = Vec::new();
        let all = run(all_vms("g", |request| {
            asked.push((request.page_token.clone(), request.group.clone()));
            let answer = match request.page_token.as_str() {
                "" => page(&["a", "b"], "t1"),
                "t1" => page(&["c"], "t2"),
                _ => page(&["d"], ""),
            };
            async move { Ok(tonic::Response::new(answer)) }
        }))
        .unwrap();
        assert_eq!(names(&all.vms), ["a", "b", "c", "d"]);
        assert_eq!(all.revision, 1, "the last page's revision");
        assert_eq!(
            asked,
            [("", "g"), ("t1", "g"), ("t2", "g")].map(|(t, g)| (t.to_string(), g.to_string()))
        );
    }

    #[test]
    fn a_server_that_does_not_advance_is_an_error_not_a_loop() {
        // The same token again, or a page with no items that names another.
        for stuck in [page(&["b"], "t1"), page(&[], "t2")] {
            let mut calls = 0;
            let answer = run(follow(|token| {
                calls += 1;
                let answer = if token.is_empty() {
                    page(&["a"], "t1")
                } else {
                    stuck.clone()
                };
                async move { Ok::<_, Status>(answer) }
            }));
            let status = answer.unwrap_err();
            assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
            assert_eq!(calls, 2);
        }
        // A cycle through tokens: t1, t2, t1.
        let mut calls = 0;
        let answer = run(follow(|token| {
            calls += 1;
            let answer = match token.as_str() {
                "" | "t2" => page(&["a"], "t1"),
                _ => page(&["b"], "t2"),
            };
            async move { Ok::<_, Status>(answer) }
        }));
        assert_eq!(answer.unwrap_err().code(), tonic::Code::Internal);
        assert_eq!(calls, 3);
    }

    #[test]
    fn an_error_on_any_page_is_the_answer() {
        let answer = run(follow(|token| async move {
            if token.is_empty() {
                Ok(page(&["a"], "t1"))
            } else {
                Err(Status::unavailable("gone"))
            }
        }));
        assert_eq!(answer.unwrap_err().code(), tonic::Code::Unavailable);
    }
}
