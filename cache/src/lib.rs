//! dino3d's on-disk store of chunked arrays: one entry file per key, each
//! holding named channel-first float arrays with their geometry, chunked,
//! byte-shuffled, compressed and checksummed; its header and index are read
//! through a memory map, its chunks a slab at a time with positioned reads
//! into a reused buffer. It knows arrays, chunks, codecs, checksums and keys,
//! and nothing of where the arrays came from: the pipeline decides what to
//! store and how to key it.
//!
//! * **Layout** ([`layout`]): the entry's header, index and chunk geometry;
//!   64 × 64 × 8 chunks by default (shallow slabs and long runs for
//!   plane-by-plane reads).
//! * **Codecs** ([`codec`]): LZ4 per byte plane (incompressible planes stored
//!   raw and read in place) or zstd.
//! * **Decode maps** ([`DecodeMap`]): integers stored with a scale, offset and
//!   clip applied on reading (in AVX2/AVX-512 kernels or a table, bit-identical
//!   to [`DecodeMap::apply`]), so 8/16-bit volumes stay small.
//! * **Reads** ([`Entry::read_box`], [`Entry::for_each_plane`]) decode only the
//!   chunks they touch, each checked before use.
//! * **Writes** ([`write::write_entry`]) are atomic (temporary file, fsync,
//!   rename).
//! * **Folders** ([`store`]): entries at `<dir>/<key[..2]>/<key>.d3c`, keyed by
//!   [`entry_key`]; damaged entries (truncated, torn, bit-flipped, or stored
//!   under another key) are detected, removed and reported, never served;
//!   lock files keep concurrent writers from building the same entry twice.

mod alloc;
mod array;
pub mod codec;
mod decode;
mod decode_map;
mod entry;
pub mod error;
pub mod layout;
mod packed;
mod read;
mod scratch;
pub mod shuffle;
mod slab;
pub mod store;
#[cfg(test)]
mod test_support;
mod window;
pub mod write;

pub use alloc::reuse_large_buffers;
pub use array::{Affine, Array};
pub use codec::Codec;
pub use decode_map::DecodeMap;
pub use entry::Entry;
pub use error::{CacheError, Result};
pub use layout::{ArrayMeta, Header, Layout, PlaneNeed, PlaneRect, StoredType};
pub use store::{CacheDir, DEFAULT_CHUNK, DEFAULT_CODEC, FORMAT_VERSION, Lookup, entry_key};
pub use write::{ArrayToWrite, write_entry};
