//! Reading and building terms without the allocations rustler's helpers make.
//!
//! rustler's `MapIterator` is double-ended: each step moves the VM's
//! iterator struct and checks the other end, which costs more than reading
//! a small placement map; `for_each` walks forward with the iterator on the
//! stack. `map_from_arrays` and `list` build from stack arrays, where
//! rustler's helpers copy into fresh vectors first.

use rustler::sys::{
    enif_make_list_from_array, enif_make_map_from_arrays, enif_make_tuple_from_array,
    enif_map_iterator_create, enif_map_iterator_destroy, enif_map_iterator_get_pair,
    enif_map_iterator_next, ErlNifMapIterator, ErlNifMapIteratorEntry, ErlNifTerm,
};
use rustler::{Env, Term};
use std::mem::MaybeUninit;

/// Calls `visit` on each `(key, value)` of `map`, in the map's order (key
/// order for maps of up to 32 keys), stopping at the first error. `None`
/// when `map` is not a map.
pub fn for_each<'a, E>(
    map: Term<'a>,
    mut visit: impl FnMut(Term<'a>, Term<'a>) -> Result<(), E>,
) -> Option<Result<(), E>> {
    let env = map.get_env();
    let mut iter = MaybeUninit::<ErlNifMapIterator>::uninit();
    // SAFETY: `iter` is initialised by a successful create, then used and
    // destroyed once with the same env while `map` is alive (it is borrowed
    // for 'a); keys and values are terms of that env.
    unsafe {
        if enif_map_iterator_create(
            env.as_c_arg(),
            map.as_c_arg(),
            iter.as_mut_ptr(),
            ErlNifMapIteratorEntry::ERL_NIF_MAP_ITERATOR_HEAD,
        ) == 0
        {
            return None;
        }
        let iter = iter.assume_init_mut();
        let (mut key, mut value) = (MaybeUninit::uninit(), MaybeUninit::uninit());
        // The result leaves the loop by `break`, never overwritten: a
        // `Result` assigned over another is dropped first, and rustler's
        // error type has drop glue, a call per entry.
        let result = loop {
            if enif_map_iterator_get_pair(
                env.as_c_arg(),
                iter,
                key.as_mut_ptr(),
                value.as_mut_ptr(),
            ) == 0
            {
                break Ok(());
            }
            if let Err(e) = visit(
                Term::new(env, key.assume_init()),
                Term::new(env, value.assume_init()),
            ) {
                break Err(e);
            }
            enif_map_iterator_next(env.as_c_arg(), iter);
        };
        enif_map_iterator_destroy(env.as_c_arg(), iter);
        Some(result)
    }
}

/// A map from parallel arrays of raw keys and values, which must be
/// distinct.
pub fn map_from_arrays<'a>(env: Env<'a>, keys: &[ErlNifTerm], values: &[ErlNifTerm]) -> Term<'a> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut map = MaybeUninit::uninit();
    // SAFETY: both arrays hold `keys.len()` terms of `env`; the VM writes
    // `map` when it answers non-zero.
    unsafe {
        let made = enif_make_map_from_arrays(
            env.as_c_arg(),
            keys.as_ptr(),
            values.as_ptr(),
            keys.len(),
            map.as_mut_ptr(),
        );
        assert!(made != 0, "map keys are distinct");
        Term::new(env, map.assume_init())
    }
}

/// A term as the raw handle `from_arrays` takes.
pub fn raw(term: Term) -> ErlNifTerm {
    term.as_c_arg()
}

/// A tuple of raw terms.
pub fn tuple<'a>(env: Env<'a>, items: &[ErlNifTerm]) -> Term<'a> {
    // SAFETY: `items` holds `items.len()` terms of `env`.
    unsafe {
        Term::new(
            env,
            enif_make_tuple_from_array(env.as_c_arg(), items.as_ptr(), items.len() as u32),
        )
    }
}

/// A list of raw terms.
pub fn list<'a>(env: Env<'a>, items: &[ErlNifTerm]) -> Term<'a> {
    // SAFETY: `items` holds `items.len()` terms of `env`.
    unsafe {
        Term::new(
            env,
            enif_make_list_from_array(env.as_c_arg(), items.as_ptr(), items.len() as u32),
        )
    }
}
