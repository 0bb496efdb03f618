//! `evict_admit`: a manager's whole admission in one call (the core's
//! `budget::admission::admit`): the snapshot, the placement and the
//! candidates cross once; the evictions, the residuals and the new usage
//! come back.

use model_budget_core::budget::admission::{self, Admission, Answer, Intent};
use model_budget_core::Placement;
use rustler::{Encoder, Env, NifMap, Term};

use crate::atoms;
use crate::badarg::{bad, reply, BadArg, Decoded};
use crate::codec::{encode_placement, DeviceTerm, InsufficientTerm};
use crate::decode;
use crate::evict::{decode_placements, decode_snapshot, ReasonTerm};
use crate::placement;

rustler::atoms! {
    ahead,
    candidates,
    fence,
    load,
}

const CANDIDATES: &str = "nil or a list of {id, placement}";

/// `:load` or `:fence`.
fn intent(term: Term) -> Decoded<Intent> {
    match decode::atom(term) {
        Some(a) if a == load() => Ok(Intent::Load),
        Some(a) if a == fence() => Ok(Intent::Fence),
        _ => bad("intent", ":load or :fence", term),
    }
}

/// The snapshot's optional `:ahead`: placements of the loads waiting
/// ahead (none when the key is absent, `nil` or `[]`).
fn decode_ahead(snapshot: Term) -> Decoded<Vec<Placement>> {
    match snapshot.map_get(ahead()) {
        Ok(term) if !term.is_empty_list() && decode::atom(term) != Some(atoms::nil()) => {
            decode_placements(term, "snapshot :ahead")
        }
        _ => Ok(Vec::new()),
    }
}

/// A list's elements, one cell at a time: unlike rustler's iterator, it
/// does not walk the whole list first (to refuse an improper one), so the
/// walk reads only as far as it gets. `Err` at an improper tail.
struct Cells<'a>(Term<'a>);

impl<'a> Iterator for Cells<'a> {
    type Item = Result<Term<'a>, Term<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty_list() {
            return None;
        }
        match self.0.list_get_cell() {
            Ok((head, tail)) => {
                self.0 = tail;
                Some(Ok(head))
            }
            Err(_) => Some(Err(self.0)),
        }
    }
}

/// `{id, placement}`: the id's term, and the placement decoded.
fn candidate<'a>(term: Term<'a>) -> Decoded<'a, (Term<'a>, Term<'a>, Placement)> {
    let Ok((id, held)) = term.decode::<(Term, Term)>() else {
        return bad("candidates", CANDIDATES, term);
    };
    Ok((id, held, placement::decode(held, "candidates")?))
}

/// `:candidates` (list them and call again), `{:ok, evictions, residuals,
/// usage}` with each eviction `%{id, placement, device, reason}` and the
/// placements as maps, or check's `{:error, {:insufficient_memory,
/// details}}`.
#[rustler::nif]
fn evict_admit<'a>(
    env: Env<'a>,
    snapshot_term: Term<'a>,
    placement_term: Term<'a>,
    candidates_term: Term<'a>,
    intent_term: Term<'a>,
) -> Term<'a> {
    let result = (|| {
        let (snapshot, rules) = decode_snapshot(snapshot_term)?;
        let ahead = decode_ahead(snapshot_term)?;
        let placement = placement::decode(placement_term, "placement")?;
        let intent = intent(intent_term)?;
        let list = if decode::atom(candidates_term) == Some(atoms::nil()) {
            None
        } else if candidates_term.is_list() {
            Some(Cells(candidates_term))
        } else {
            return bad("candidates", CANDIDATES, candidates_term);
        };
        // Each candidate is decoded when the walk reaches it; its terms are
        // kept to name it in the answer. A bad one (or an improper tail)
        // stops the walk, and its own error is raised.
        let mut pulled: Vec<(Term, Term)> = Vec::new();
        let mut refused: Option<Box<BadArg>> = None;
        let walked = list.map(|cells| {
            cells.map(|cell| {
                let decoded = match cell {
                    Ok(term) => candidate(term),
                    Err(_) => bad("candidates", CANDIDATES, candidates_term),
                };
                match decoded {
                    Ok((id, held, decoded)) => {
                        pulled.push((id, held));
                        Ok(decoded)
                    }
                    Err(e) => {
                        refused = Some(e);
                        Err(model_budget_core::Error::InvalidArgument {
                            arg: "candidates",
                            message: CANDIDATES.to_owned(),
                        })
                    }
                }
            })
        });
        let rules = rules.as_ref().map(|r| &r.constraint);
        let answer = admission::admit(&snapshot, &ahead, rules, &placement, walked, intent);
        if let Some(e) = refused {
            return Err(e);
        }
        Ok(match answer? {
            Answer::Unlisted => candidates().encode(env),
            Answer::Short(short) => (
                atoms::error(),
                (atoms::insufficient_memory(), InsufficientTerm(short)),
            )
                .encode(env),
            Answer::Admitted(admitted) => encode_admission(env, &admitted, &pulled),
        })
    })();
    reply(env, result)
}

/// One eviction, as `ModelBudget.Eviction.admit/3` answers it.
#[derive(NifMap)]
struct EvictionTerm<'a> {
    device: DeviceTerm,
    id: Term<'a>,
    placement: Term<'a>,
    reason: ReasonTerm,
}

fn encode_admission<'a>(env: Env<'a>, a: &Admission, pulled: &[(Term<'a>, Term<'a>)]) -> Term<'a> {
    let evictions: Vec<EvictionTerm> = a
        .evictions
        .iter()
        .map(|e| {
            let (id, placement) = pulled[e.candidate];
            EvictionTerm {
                device: e.device.into(),
                id,
                placement,
                reason: e.reason.into(),
            }
        })
        .collect();
    let residuals: Vec<Term> = a
        .residuals
        .iter()
        .map(|r| encode_placement(env, r))
        .collect();
    (
        atoms::ok(),
        evictions,
        residuals,
        encode_placement(env, &a.usage),
    )
        .encode(env)
}
