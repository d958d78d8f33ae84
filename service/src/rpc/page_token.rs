//! Page tokens (AIP-158): where the next page of a list starts, opaque to clients.
//!
//! A token is the last key of the previous page (a job id, a dataset or model name),
//! base64url-encoded so that clients treat it as a token rather than build one. A
//! token is no credential: it only says where to resume, and any position a client
//! could forge is one it could reach by paging.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tonic::Status;

/// The longest cursor a token may hold (ids and names are at most 128 bytes).
const MAX_CURSOR: usize = 256;

pub fn encode(cursor: &str) -> String {
    URL_SAFE_NO_PAD.encode(cursor)
}

/// The cursor in a request's `page_token`: `None` for the first page.
pub fn decode(token: &str) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || deephardway::errors::invalid_field("page_token", "is not a token from a previous page");
    if token.len() > MAX_CURSOR * 2 {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let cursor = String::from_utf8(bytes).map_err(|_| invalid())?;
    if cursor.is_empty() || cursor.len() > MAX_CURSOR || cursor.contains(['/', '\0']) {
        return Err(invalid());
    }
    Ok(Some(cursor))
}

/// One page of `items` (sorted by `cursor`): those after the request's token, at most
/// `page_size`, and the token of the page after, empty on the last one. For lists that
/// are read whole (models, datasets: a few per name), so paging only bounds the answer.
pub fn page<T>(
    items: Vec<T>,
    cursor: impl Fn(&T) -> String,
    page_size: usize,
    page_token: &str,
) -> Result<(Vec<T>, String), Status> {
    let after = decode(page_token)?;
    let mut rest = items.into_iter().filter(|item| after.as_ref().is_none_or(|a| cursor(item) > *a)).peekable();
    let page: Vec<T> = rest.by_ref().take(page_size).collect();
    let next = match (rest.peek(), page.last()) {
        (Some(_), Some(last)) => encode(&cursor(last)),
        _ => String::new(),
    };
    Ok((page, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_a_list_once() {
        let items: Vec<String> = (0..7).map(|i| format!("m{i}")).collect();
        let (mut seen, mut token) = (Vec::new(), String::new());
        loop {
            let (page, next) = page(items.clone(), |s| s.clone(), 3, &token).unwrap();
            assert!(page.len() <= 3);
            seen.extend(page);
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(seen, items);
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let token = encode("0190a1b2-c3d4");
        assert_eq!(decode(&token).unwrap().as_deref(), Some("0190a1b2-c3d4"));
        assert_eq!(decode("").unwrap(), None);
        for bad in ["!!!", &encode("a/b"), &encode(&"x".repeat(300))] {
            assert_eq!(decode(bad).unwrap_err().code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }
}
