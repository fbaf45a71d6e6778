//! The round-robin pipeline of `vramswap demo` (filled in below).
