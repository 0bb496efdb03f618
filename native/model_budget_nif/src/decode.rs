//! Decoding helpers that name the argument and keep the offending term.

use rustler::{Atom, ListIterator, NifResult, Term};

use crate::atoms;
use crate::badarg::{bad, Decoded};

/// A non-negative integer that fits in u64.
pub fn bytes<'a>(term: Term<'a>, arg: &str) -> Decoded<'a, u64> {
    term.decode::<u64>()
        .or_else(|_| bad(arg, "a non-negative integer below 2^64", term))
}

/// A non-negative integer that fits in u32 (GPU indices, counts).
pub fn index<'a>(term: Term<'a>, arg: &str) -> Decoded<'a, u32> {
    term.decode::<u32>()
        .or_else(|_| bad(arg, "a non-negative integer below 2^32", term))
}

/// An atom, if the term is one.
pub fn atom(term: Term) -> Option<Atom> {
    term.decode::<Atom>().ok()
}

/// `None` for `nil`, else the term decoded by `decode`.
pub fn optional<'a, T>(
    term: Term<'a>,
    decode: impl FnOnce(Term<'a>) -> Decoded<'a, T>,
) -> Decoded<'a, Option<T>> {
    if atom(term) == Some(atoms::nil()) {
        Ok(None)
    } else {
        decode(term).map(Some)
    }
}

/// Whether the term is `nil` or `:infinity`, both of which mean "no limit".
pub fn is_unbounded(term: Term) -> bool {
    atom(term).is_some_and(|a| a == atoms::infinity() || a == atoms::nil())
}

/// A proper list's iterator. Rustler's iterator panics at an improper tail
/// (`[a | b]`), so an improper list is refused here like any other
/// non-list, and the caller names the argument.
pub fn list(term: Term) -> NifResult<ListIterator> {
    term.list_length()?;
    term.decode::<ListIterator>()
}

/// `term` when it is a proper list (for decoders that walk lists
/// themselves, such as `Vec<T>`'s).
pub fn proper(term: Term) -> NifResult<Term> {
    term.list_length().map(|_| term)
}
