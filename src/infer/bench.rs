//! Batched against one-prompt-at-a-time generation (filled in below).
