//! Estimation: the bytes a model needs under given load options and where
//! llama.cpp would put them, from the byte-count path (`distribute`) to the
//! layer-by-layer one (`layout`), and the fit search built on both.

pub mod distribute;
pub mod fit;
pub mod layout;
pub mod options;
pub mod shape;
pub mod split;
