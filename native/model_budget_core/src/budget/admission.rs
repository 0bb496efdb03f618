//! An admission ledger: a budget and the usage folded under it, so that a
//! manager can admit a placement (check, then fold) in one step without
//! passing the budget and the usage back and forth.

use crate::budget::check::{check, Insufficient};
use crate::budget::placement::Placement;
use crate::budget::spec::Budget;
use crate::error::Result;

/// A budget and what is admitted under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admissions {
    pub budget: Budget,
    pub usage: Placement,
}

impl Admissions {
    /// Nothing admitted yet.
    pub fn new(budget: Budget) -> Self {
        Admissions {
            budget,
            usage: Placement::empty(),
        }
    }

    /// Admits `placement` when it fits on top of the usage: the usage grows
    /// by it. When it does not fit, nothing changes and the first short
    /// device is named, as [`check`] names it.
    pub fn admit(
        &mut self,
        placement: &Placement,
    ) -> Result<std::result::Result<(), Insufficient>> {
        if let Err(short) = check(&self.budget, placement, &self.usage) {
            return Ok(Err(short));
        }
        self.usage.fold_in(placement)?;
        Ok(Ok(()))
    }

    /// Takes an admitted `placement` back out (see [`Placement::release`]).
    pub fn release(&mut self, placement: &Placement) -> Result<()> {
        self.usage.release_from(placement)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn admits_until_full_then_names_the_device() {
        let mut a = Admissions::new(Budget::Combined { limit: 10 });
        let p = Placement::in_ram(4);
        assert_eq!(a.admit(&p).unwrap(), Ok(()));
        assert_eq!(a.admit(&p).unwrap(), Ok(()));
        let short = a.admit(&p).unwrap().unwrap_err();
        assert_eq!((short.required, short.available), (4, 2));
        assert_eq!(a.usage, Placement::in_ram(8));
        a.release(&p).unwrap();
        assert_eq!(a.admit(&p).unwrap(), Ok(()));
        assert!(a.release(&Placement::in_ram(100)).is_err());
    }

    proptest! {
        /// Admitting is a check followed by a fold, and nothing on refusal.
        #[test]
        fn admit_is_check_then_fold(limit in 1..1000u64, sizes in proptest::collection::vec(0..300u64, 0..10)) {
            let budget = Budget::Combined { limit };
            let mut a = Admissions::new(budget.clone());
            let mut used = Placement::empty();
            for s in sizes {
                let p = Placement::in_ram(s);
                let expected = check(&budget, &p, &used);
                prop_assert_eq!(a.admit(&p).unwrap(), expected);
                if expected.is_ok() {
                    used = used.fold(&p).unwrap();
                }
                prop_assert_eq!(&a.usage, &used);
            }
        }
    }
}
