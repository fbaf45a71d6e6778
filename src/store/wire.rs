//! The store's protocol: JSON messages over a Unix stream socket, each a 4-byte little-endian
//! length and its body, with at most one file descriptor (`SCM_RIGHTS`) riding on the first
//! byte of a message. A connection starts with [`Request::Hello`]; the store answers with its
//! own, or refuses a client of another protocol version.
//!
//! A connection holds at most one set: the store counts a client of a set for as long as the
//! connection that attached it stays open, so a client that dies (however it dies) stops
//! counting when the kernel closes its socket.

use std::io::{IoSlice, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::ErrorKind;
use crate::weights::{DType, WeightSetDesc};

/// What a store says it is in its hello, and what a client must say in its own.
pub const MAGIC: &str = "vramswap-store";

/// The protocol this build speaks. A client and a store of different versions refuse each
/// other with a clear error at the hello, before anything else is exchanged.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest message either side reads (a description of 100,000 tensors is a few MB).
pub(crate) const MAX_MESSAGE: u32 = 64 << 20;

/// A client's request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Request {
    /// First on every connection.
    Hello {
        /// [`MAGIC`].
        magic: String,
        /// The client's [`PROTOCOL_VERSION`].
        protocol: u32,
    },
    /// The set `name`, loaded by the store from the checkpoint at `path` (cast as asked) if it
    /// does not hold it yet.
    Attach {
        /// The set's name.
        name: String,
        /// A `.safetensors` file, index or model directory.
        path: PathBuf,
        /// Cast floats to this type while loading.
        cast: Option<DType>,
    },
    /// The set `name` with the client's own bytes: the store answers with memory to fill
    /// ([`Reply::Fill`]) unless it holds the same contents already ([`Reply::Set`]).
    Put {
        /// The set's name.
        name: String,
        /// Its layout.
        desc: WeightSetDesc,
        /// [`contents_checksum`] of its bytes.
        checksum: u64,
    },
    /// The memory of a [`Reply::Fill`] holds the set: check it and serve it.
    Commit,
    /// The set `name` as the store holds it, whatever its source (an earlier process put or
    /// loaded it); refused if the store does not hold it.
    Open {
        /// The set's name.
        name: String,
    },
    /// What the store holds.
    Status,
    /// This connection no longer holds its set (sent when a client drops it, and answered, so
    /// the store's count is right before the client goes on: closing alone would be noticed
    /// a moment later).
    Release,
}

/// The store's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Reply {
    /// The store's hello.
    Hello {
        /// [`MAGIC`].
        magic: String,
        /// The store's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The store's crate version.
        version: String,
    },
    /// A set this connection now holds; its sealed shared memory rides on the message.
    Set {
        /// Its layout.
        desc: WeightSetDesc,
        /// Whether this request read it from disk (or took it from the client), rather than
        /// attaching to a copy the store held.
        fresh: bool,
    },
    /// Memory of `bytes` bytes to fill with the set (rides on the message), then
    /// [`Request::Commit`].
    Fill {
        /// Its size.
        bytes: u64,
    },
    /// What the store holds.
    Status(StoreStatus),
    /// The connection's set is no longer counted as held by it.
    Released,
    /// A refusal; the connection stays usable unless the hello failed.
    Error {
        /// Its class.
        kind: ErrorKind,
        /// What went wrong.
        message: String,
    },
}

/// What `vramswap store status` reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// Bytes of shared memory the store holds (sets being loaded included).
    pub host_used: u64,
    /// Its budget, if it has one.
    pub host_budget: Option<u64>,
    /// The sets, by name.
    pub sets: Vec<StoredSetStatus>,
    /// What it has done since it started.
    pub counters: StoreCounters,
    /// The protocol it speaks.
    pub protocol: u32,
}

/// One set of [`StoreStatus`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredSetStatus {
    /// Its name.
    pub name: String,
    /// Its bytes.
    pub bytes: u64,
    /// Connections that hold it now.
    pub clients: usize,
    /// `ready`, `loading` (from disk) or `filling` (by a client).
    pub phase: String,
    /// Where it came from: the checkpoint path, or `client`.
    pub source: String,
}

/// Counts of what a store did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreCounters {
    /// Sets read from disk.
    pub loads: u64,
    /// Sets filled by a client (`register_arrays`).
    pub puts: u64,
    /// Requests answered with a copy the store already held.
    pub attaches: u64,
    /// Sets dropped to stay under the budget.
    pub evictions: u64,
    /// Loads and fills that failed or were abandoned (their memory discarded, never served).
    pub discarded: u64,
}

/// The identity of a client's bytes: a checksum over each tensor's name, dtype, shape and
/// bytes, in name order, so that the same arrays give the same value whatever their layout.
pub(crate) fn contents_checksum<'a>(
    tensors: impl IntoIterator<Item = (&'a str, DType, &'a [u64], &'a [u8])>,
) -> u64 {
    let mut items: Vec<_> = tensors.into_iter().collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    let mut acc = Vec::with_capacity(items.len() * 48);
    for (name, dtype, shape, bytes) in items {
        acc.extend_from_slice(&(name.len() as u64).to_le_bytes());
        acc.extend_from_slice(name.as_bytes());
        acc.extend_from_slice(dtype.to_string().as_bytes());
        acc.extend_from_slice(&(shape.len() as u64).to_le_bytes());
        for d in shape {
            acc.extend_from_slice(&d.to_le_bytes());
        }
        acc.extend_from_slice(&vramswap_sim::kernels::checksum(bytes).to_le_bytes());
        acc.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    }
    vramswap_sim::kernels::checksum(&acc)
}

/// Sends `msg`, with `fd` on its first byte.
pub(crate) fn send<T: Serialize>(
    stream: &mut UnixStream,
    msg: &T,
    fd: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&n| n <= MAX_MESSAGE)
        .ok_or_else(|| std::io::Error::other(format!("a message of {} bytes", body.len())))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(std::io::Error::other("no room for a file descriptor"));
        }
    }
    let sent = loop {
        match rustix::net::sendmsg(
            stream.as_fd(),
            &[IoSlice::new(&frame)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // The descriptor went with the first byte; the rest is plain bytes, sent with `NOSIGNAL`
    // too: a peer that died mid-message is an error here, never a SIGPIPE that kills a C
    // program that did not ignore it.
    let mut at = sent;
    while at < frame.len() {
        match rustix::net::send(stream.as_fd(), &frame[at..], SendFlags::NOSIGNAL) {
            Ok(n) => at += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The `magic` and `protocol` of a hello (`tag` is `"op"` for a client's, `"reply"` for a
/// store's), read from the message as plain JSON: a peer of another version, whose hello may
/// have other fields, still gets told the versions differ instead of a parse error.
pub(crate) fn hello_of(msg: &serde_json::Value, tag: &str) -> Option<(String, u64)> {
    if msg.get(tag)?.as_str()? != "hello" {
        return None;
    }
    Some((
        msg.get("magic")?.as_str()?.to_string(),
        msg.get("protocol")?.as_u64()?,
    ))
}

/// Receives one message and the descriptor on it, if any; `None` when the peer closed the
/// connection between messages.
pub(crate) fn recv<T: DeserializeOwned>(
    stream: &mut UnixStream,
) -> std::io::Result<Option<(T, Option<OwnedFd>)>> {
    let mut len = [0u8; 4];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match rustix::net::recvmsg(
            stream.as_fd(),
            &mut [IoSliceMut::new(&mut len)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(r) => break r.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut fd = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            // More than one descriptor is not this protocol: the extras are closed here.
            for f in fds {
                fd.get_or_insert(f);
            }
        }
    }
    if got == 0 {
        return Ok(None);
    }
    stream.read_exact(&mut len[got..])?;
    let n = u32::from_le_bytes(len);
    if n > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a message of {n} bytes (the most is {MAX_MESSAGE}): not this protocol"),
        ));
    }
    let mut body = vec![0u8; n as usize];
    stream.read_exact(&mut body)?;
    let msg = serde_json::from_slice(&body).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a message of this protocol: {e}"),
        )
    })?;
    Ok(Some((msg, fd)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_hello_of_another_version_with_other_fields_is_still_read_as_a_hello() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"op":"hello","magic":"vramswap-store","protocol":7,"features":["x"]}"#,
        )
        .unwrap();
        assert_eq!(hello_of(&v, "op"), Some((MAGIC.to_string(), 7)));
        assert_eq!(hello_of(&v, "reply"), None);
    }

    #[test]
    fn a_message_and_its_descriptor_arrive_together_and_in_order() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        send(&mut a, &Request::Status, Some(file.as_fd())).unwrap();
        send(&mut a, &Request::Commit, None).unwrap();
        let (first, fd): (Request, _) = recv(&mut b).unwrap().unwrap();
        assert!(matches!(first, Request::Status));
        assert!(fd.is_some());
        let (second, fd): (Request, _) = recv(&mut b).unwrap().unwrap();
        assert!(matches!(second, Request::Commit));
        assert!(fd.is_none());
        drop(a);
        assert!(
            recv::<Request>(&mut b).unwrap().is_none(),
            "closed: no message"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_huge_allocation() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        let e = recv::<Reply>(&mut b).unwrap_err();
        assert!(e.to_string().contains("not this protocol"), "{e}");
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&5u32.to_le_bytes()).unwrap();
        a.write_all(b"hello").unwrap();
        let e = recv::<Reply>(&mut b).unwrap_err();
        assert!(
            e.to_string().contains("not a message of this protocol"),
            "{e}"
        );
    }

    #[test]
    fn the_contents_checksum_ignores_order_but_not_bytes_names_or_shapes() {
        let a = [1u8, 2, 3, 4];
        let b = [1u8, 2, 3, 5];
        let base = contents_checksum([
            ("x", DType::U8, &[4u64][..], &a[..]),
            ("y", DType::U8, &[4u64][..], &b[..]),
        ]);
        let swapped = contents_checksum([
            ("y", DType::U8, &[4u64][..], &b[..]),
            ("x", DType::U8, &[4u64][..], &a[..]),
        ]);
        assert_eq!(base, swapped);
        for other in [
            contents_checksum([
                ("x", DType::U8, &[4u64][..], &b[..]),
                ("y", DType::U8, &[4u64][..], &b[..]),
            ]),
            contents_checksum([
                ("x", DType::U8, &[2, 2][..], &a[..]),
                ("y", DType::U8, &[4u64][..], &b[..]),
            ]),
            contents_checksum([
                ("z", DType::U8, &[4u64][..], &a[..]),
                ("y", DType::U8, &[4u64][..], &b[..]),
            ]),
        ] {
            assert_ne!(base, other);
        }
    }
}
