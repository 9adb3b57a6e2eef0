//! Jobs as users submit them: the typed job (`spec`: one variant per kind), each kind's validated
//! form (`compare`, `finetune`; pre-training is a plain trainer config), the folders their data
//! and uploads come from, what a run will cost (`estimate`), and the service that submits and looks jobs up for the API and the
//! pages alike.

pub mod compare;
pub mod datasets;
pub mod estimate;
pub mod finetune;
pub mod service;
pub mod spec;
pub mod uploads;
