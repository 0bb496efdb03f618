//! An empty NIF: the floor that benchmarks compare every call against.

#[rustler::nif]
fn noop() -> rustler::Atom {
    crate::atoms::ok()
}
