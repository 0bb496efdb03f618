//! Serving primitives: the lock-free gate that counts a resident model's
//! leases.

pub mod gate;
