//! The encoding of one committed transaction (its commit time and mutations), shared by the
//! engines that store changelog entries themselves: the embedded engine's changelog table and
//! the etcd engine's commit record.
//!
//! ```text
//! entry    := version:u8 (=1) time:u64 count:u32 mutation*count
//! mutation := 1 key value | 2 key | 3 start end        (tag:u8)
//! bytes    := len:u32 data
//! ```
//! Integers are big-endian.

use super::{CommitTime, Mutation};

const VERSION: u8 = 1;
const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_DELETE_RANGE: u8 = 3;

pub(crate) fn encode_into(out: &mut Vec<u8>, time: CommitTime, mutations: &[Mutation]) {
    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        // Every engine bounds a transaction far below 4 GiB before encoding it.
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    }
    out.push(VERSION);
    out.extend_from_slice(&time.0.to_be_bytes());
    out.extend_from_slice(&(mutations.len() as u32).to_be_bytes());
    for m in mutations {
        match m {
            Mutation::Put { key, value } => {
                out.push(TAG_PUT);
                bytes(out, key);
                bytes(out, value);
            }
            Mutation::Delete { key } => {
                out.push(TAG_DELETE);
                bytes(out, key);
            }
            Mutation::DeleteRange { start, end } => {
                out.push(TAG_DELETE_RANGE);
                bytes(out, start);
                bytes(out, end);
            }
        }
    }
}

pub(crate) fn decode(mut input: &[u8]) -> std::result::Result<(CommitTime, Vec<Mutation>), String> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> std::result::Result<&'a [u8], String> {
        if input.len() < n {
            return Err(format!(
                "truncated entry: needed {n} more bytes, {} left",
                input.len()
            ));
        }
        let (head, rest) = input.split_at(n);
        *input = rest;
        Ok(head)
    }
    fn u32_be(input: &mut &[u8]) -> std::result::Result<u32, String> {
        let b = take(input, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn bytes(input: &mut &[u8]) -> std::result::Result<Vec<u8>, String> {
        let len = u32_be(input)? as usize;
        Ok(take(input, len)?.to_vec())
    }

    let version = take(&mut input, 1)?[0];
    if version != VERSION {
        return Err(format!("unknown entry version {version}"));
    }
    let mut time = [0u8; 8];
    time.copy_from_slice(take(&mut input, 8)?);
    let count = u32_be(&mut input)? as usize;
    // Every mutation takes at least 5 bytes: do not trust `count` for the allocation.
    let mut mutations = Vec::with_capacity(count.min(input.len() / 5));
    for _ in 0..count {
        let tag = take(&mut input, 1)?[0];
        mutations.push(match tag {
            TAG_PUT => Mutation::Put {
                key: bytes(&mut input)?,
                value: bytes(&mut input)?,
            },
            TAG_DELETE => Mutation::Delete {
                key: bytes(&mut input)?,
            },
            TAG_DELETE_RANGE => Mutation::DeleteRange {
                start: bytes(&mut input)?,
                end: bytes(&mut input)?,
            },
            other => return Err(format!("unknown mutation tag {other}")),
        });
    }
    if !input.is_empty() {
        return Err(format!("{} trailing bytes after the entry", input.len()));
    }
    Ok((CommitTime(u64::from_be_bytes(time)), mutations))
}

/// The encoding of one transaction as a new buffer.
pub(crate) fn encode(time: CommitTime, mutations: &[Mutation]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, time, mutations);
    out
}
