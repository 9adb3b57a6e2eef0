//! The value sets the platform stores in text columns, each an enum written once: its names
//! in SQL, JSON, the API schema and the pages all derive from the variants (lower-case). The
//! migrations' `check` constraints hold the same lists on the database side. The device class
//! is the trainer's `DeviceClass` (`TRAIN.DEVICE`), read from its column with `try_from`.

use serde::{Deserialize, Serialize};

/// Declares a value set: the enum with its text mapping for SQL, JSON, the API schema and the
/// pages (all lower-case variant names), and `as_str`.
macro_rules! value_set {
    ($(#[$meta:meta])* $name:ident { $($variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type,
            utoipa::ToSchema, strum::Display, strum::EnumString, strum::IntoStaticStr,
            strum::VariantArray,
        )]
        #[sqlx(type_name = "text", rename_all = "lowercase")]
        #[serde(rename_all = "lowercase")]
        #[strum(serialize_all = "lowercase")]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                self.into()
            }
        }
    };
}

value_set! {
    /// Where a job is in its life. `queued` and `running` are active; the other three are final.
    JobStatus { Queued, Running, Succeeded, Failed, Cancelled }
}

value_set! {
    /// What a job runs: IFP pre-training, one fine-tuning run, or a comparison (pre-training,
    /// then fine-tuning from the IFP encoder and from scratch, scored on the same test set).
    JobKind { Pretrain, Finetune, Compare }
}

value_set! {
    /// What a listed file of a job is: model weights, training state, a sample strip, or a
    /// result file (a comparison's report, a fine-tuning run's validation history).
    CheckpointKind { Model, State, Sample, Report }
}

value_set! {
    /// How an attempt ended; null while it runs. `lost`: its lease expired (the worker died or
    /// was cut off); `interrupted`: its worker shut down and gave the job back.
    AttemptOutcome { Succeeded, Failed, Cancelled, Lost, Interrupted }
}

impl JobStatus {
    /// Queued or running: the job may still change.
    pub fn is_active(self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

/// The names of a value set, for error messages (`queued, running, ...`).
pub fn names<T: strum::VariantArray + Copy + Into<&'static str>>() -> String {
    T::VARIANTS
        .iter()
        .map(|v| (*v).into())
        .collect::<Vec<&str>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use strum::VariantArray;

    use super::*;

    /// The names must stay those in the migrations' `check` constraints and in stored rows.
    #[test]
    fn names_match_the_stored_values() {
        assert_eq!(
            names::<JobStatus>(),
            "queued, running, succeeded, failed, cancelled"
        );
        assert_eq!(names::<JobKind>(), "pretrain, finetune, compare");
        assert_eq!(names::<CheckpointKind>(), "model, state, sample, report");
        assert_eq!(
            names::<AttemptOutcome>(),
            "succeeded, failed, cancelled, lost, interrupted"
        );
        for s in JobStatus::VARIANTS {
            let json = serde_json::to_value(s).expect("serialises");
            assert_eq!(json, serde_json::json!(s.as_str()));
            assert_eq!(s.as_str().parse::<JobStatus>().ok(), Some(*s));
        }
        assert!("Queued".parse::<JobStatus>().is_err());
    }
}
