//! What every algorithm's settings struct is and provides: the [`AlgoSettings`] trait
//! (validation, building the optimizer) that [`super::AlgoConfig`] dispatches through, and
//! the [`algo_config!`] declaration that embeds the shared robust-aggregation settings in
//! each struct while keeping the flat TOML form users write.

use std::fmt;

use meridian_kernels::pipeline::CompressorConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::AlgoConfig;
use crate::algorithm::Algorithm;
use crate::error::Result;
use crate::outer::OuterOptimizer;
use crate::params::ParamSet;

/// What every algorithm's settings provide. [`AlgoConfig::settings`] is the one place that
/// picks the variant; every [`AlgoConfig`] method goes through it.
pub trait AlgoSettings: SettingsForm + fmt::Debug {
    /// Which algorithm these settings are for.
    fn algorithm(&self) -> Algorithm;

    /// Checks every setting is in range.
    fn validate(&self) -> Result<()>;

    /// Builds the optimizer for one worker whose parameters are `params`.
    fn build(&self, params: &ParamSet) -> Result<Box<dyn OuterOptimizer>>;

    /// The compression pipeline of an algorithm that sends compressed segments (a
    /// Byzantine worker decodes and re-encodes its update through it), `None` for one that
    /// sends dense or quantized values.
    fn payload_compressor(&self) -> Result<Option<CompressorConfig>> {
        Ok(None)
    }
}

/// The settings' TOML form, for every settings struct (implemented for all of them at
/// once, through serde).
pub trait SettingsForm {
    /// The settings as one flat table, the form users write.
    fn to_table(&self) -> std::result::Result<toml::Table, toml::ser::Error>;

    /// Settings of the same algorithm read from `table`, in which every key must be one
    /// of its settings.
    fn parse(&self, table: toml::Table) -> std::result::Result<AlgoConfig, toml::de::Error>;
}

impl<T> SettingsForm for T
where
    T: Serialize + DeserializeOwned + Into<AlgoConfig>,
{
    fn to_table(&self) -> std::result::Result<toml::Table, toml::ser::Error> {
        toml::Table::try_from(self)
    }

    fn parse(&self, table: toml::Table) -> std::result::Result<AlgoConfig, toml::de::Error> {
        T::deserialize(toml::Value::Table(table)).map(Into::into)
    }
}

/// Declares an algorithm's settings struct: the fields given, then the shared
/// robust-aggregation settings as `robust: Robust` (see [`crate::robust`]). Its serde form
/// is the flat table users write, the robust keys (`aggregation`, `trim`,
/// `outlier_factor`, `min_cosine`) beside the algorithm's own; omitted keys keep
/// `Default`, and an unknown key is an error that names it and lists every setting.
///
/// Why not `#[serde(flatten)]`: serde does not combine it with `deny_unknown_fields`, and
/// it buffers the flattened keys, which drops the "in `key`" that toml's errors name. So
/// the macro writes a private twin of the struct with every field flat, under the same
/// name, deriving serde as the struct itself did before the robust settings moved into one
/// field; the struct converts through it. Field attributes: doc comments, then any
/// `#[serde(...)]`, which applies to the twin.
macro_rules! algo_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $(#[serde($($serde:tt)*)])*
                pub $field:ident: $ty:ty,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub struct $name {
            $(
                $(#[doc = $doc])*
                pub $field: $ty,
            )*
            /// How members' updates are combined (`aggregation`, default the plain mean)
            /// and the robust modes' parameters; see [`crate::robust`]. In a settings file
            /// these keys stand beside the others.
            pub robust: $crate::robust::Robust,
        }

        // A block, so that the twin can take the struct's name (serde's messages name it)
        // while `self::` still reaches the struct.
        const _: () = {
            type Settings = self::$name;

            #[derive(::serde::Serialize, ::serde::Deserialize)]
            #[serde(deny_unknown_fields, default)]
            struct $name {
                $(
                    $(#[serde($($serde)*)])*
                    $field: $ty,
                )*
                aggregation: $crate::robust::Aggregation,
                trim: f64,
                outlier_factor: f64,
                min_cosine: f64,
            }

            impl Default for $name {
                fn default() -> Self {
                    Settings::default().into()
                }
            }

            impl From<Settings> for $name {
                fn from(s: Settings) -> Self {
                    let $crate::robust::Robust { aggregation, trim, outlier_factor, min_cosine } =
                        s.robust;
                    Self { $($field: s.$field,)* aggregation, trim, outlier_factor, min_cosine }
                }
            }

            impl From<$name> for Settings {
                fn from(f: $name) -> Self {
                    let robust = $crate::robust::Robust {
                        aggregation: f.aggregation,
                        trim: f.trim,
                        outlier_factor: f.outlier_factor,
                        min_cosine: f.min_cosine,
                    };
                    Self { $($field: f.$field,)* robust }
                }
            }

            impl ::serde::Serialize for Settings {
                fn serialize<S: ::serde::Serializer>(
                    &self,
                    serializer: S,
                ) -> ::std::result::Result<S::Ok, S::Error> {
                    ::serde::Serialize::serialize(&$name::from(*self), serializer)
                }
            }

            impl<'de> ::serde::Deserialize<'de> for Settings {
                fn deserialize<D: ::serde::Deserializer<'de>>(
                    deserializer: D,
                ) -> ::std::result::Result<Self, D::Error> {
                    <$name as ::serde::Deserialize>::deserialize(deserializer).map(Self::from)
                }
            }
        };
    };
}
pub(crate) use algo_config;
