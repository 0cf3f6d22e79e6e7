//! Where idle sessions go (REFERENCE 4.11, Tomcat PersistentManager's `maxIdleSwap`): a
//! space on disk the store writes a session's bytes to and reads them back from by a
//! [`Slot`]. The store keeps, per swapped session, only its slot and what its walks need
//! (owner, epoch, version, deadline); `persist` implements the space (a file in `dir`).

/// Where one swapped session's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub at: u64,
    pub len: u32,
}

pub(crate) trait SwapSpace: Send + Sync + 'static {
    /// Stores `bytes`; called under the session's guard, so it only appends to a buffer
    /// or a file, never syncs (a swapped session is still in the durable tier's log).
    fn put(&self, bytes: &[u8]) -> std::io::Result<Slot>;
    /// The bytes stored at `slot`, checked (a damaged record is an error, never data).
    fn get(&self, slot: Slot) -> std::io::Result<Vec<u8>>;
    /// `slot` is no longer needed (its session came back, ended or moved).
    fn free(&self, slot: Slot);
    /// Writes what `put` buffered (the end of a swap pass).
    fn flush(&self) -> std::io::Result<()>;
    /// Whether most of the space is freed slots: then the store moves every live slot to
    /// a new file ([`SwapSpace::begin_move`] .. [`SwapSpace::end_move`]).
    fn wants_move(&self) -> bool;
    /// From now on `put` writes to a new file; `get` still reads both.
    fn begin_move(&self) -> std::io::Result<()>;
    /// `slot` is in the file being left.
    fn is_old(&self, slot: Slot) -> bool;
    /// Every live slot was moved: the old file is dropped.
    fn end_move(&self);
}
