//! Lenient scalar parsing: YAML 1.1 spellings (`20_000`, `True`) and numbers that arrived as text
//! from an environment reference all load as their intended type.

use serde::de::{self, Deserializer, Visitor};
use std::fmt;

pub(crate) fn parse_u64_text(s: &str) -> Option<u64> {
    let cleaned: String = s.trim().chars().filter(|c| *c != '_').collect();
    cleaned.parse::<u64>().ok().or_else(|| {
        cleaned
            .parse::<f64>()
            .ok()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1.8e19)
            .map(|f| f as u64)
    })
}

pub(crate) fn parse_f64_text(s: &str) -> Option<f64> {
    let cleaned: String = s.trim().chars().filter(|c| *c != '_').collect();
    cleaned.parse::<f64>().ok().filter(|f| f.is_finite())
}

pub(crate) fn parse_bool_text(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

macro_rules! lenient_option {
    ($fn_name:ident, $ty:ty, $expect:literal, $from_text:path, |$v:ident| $from_u64:expr, |$f:ident| $from_f64:expr, |$b:ident| $from_bool:expr) => {
        pub(crate) fn $fn_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$ty>, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Option<$ty>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str($expect)
                }
                fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                    Ok(None)
                }
                fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                    Ok(None)
                }
                fn visit_some<D2: Deserializer<'de>>(
                    self,
                    d: D2,
                ) -> Result<Self::Value, D2::Error> {
                    d.deserialize_any(self)
                }
                fn visit_u64<E: de::Error>(self, $v: u64) -> Result<Self::Value, E> {
                    $from_u64
                        .map(Some)
                        .ok_or_else(|| E::custom(concat!("expected ", $expect)))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                    if v < 0 {
                        let $f = v as f64;
                        return $from_f64
                            .map(Some)
                            .ok_or_else(|| E::custom(concat!("expected ", $expect)));
                    }
                    self.visit_u64(v as u64)
                }
                fn visit_f64<E: de::Error>(self, $f: f64) -> Result<Self::Value, E> {
                    $from_f64
                        .map(Some)
                        .ok_or_else(|| E::custom(concat!("expected ", $expect)))
                }
                fn visit_bool<E: de::Error>(self, $b: bool) -> Result<Self::Value, E> {
                    $from_bool
                        .map(Some)
                        .ok_or_else(|| E::custom(concat!("expected ", $expect)))
                }
                fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                    $from_text(s).map(Some).ok_or_else(|| {
                        E::custom(format!(concat!("expected ", $expect, ", got {:?}"), s))
                    })
                }
            }
            d.deserialize_option(V)
        }
    };
}

lenient_option!(
    opt_u64,
    u64,
    "a non-negative integer",
    parse_u64_text,
    |v| Some(v),
    |f| (f.fract() == 0.0 && f >= 0.0).then_some(f as u64),
    |_b| None::<u64>
);
lenient_option!(
    opt_u32,
    u32,
    "a non-negative integer",
    parse_u32_text,
    |v| u32::try_from(v).ok(),
    |f| (f.fract() == 0.0 && f >= 0.0 && f <= u32::MAX as f64).then_some(f as u32),
    |_b| None::<u32>
);
lenient_option!(
    opt_f64,
    f64,
    "a number",
    parse_f64_text,
    |v| Some(v as f64),
    |f| Some(f),
    |_b| None::<f64>
);
lenient_option!(
    opt_bool,
    bool,
    "a boolean",
    parse_bool_text,
    |v| match v {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    },
    |_f| None::<bool>,
    |b| Some(b)
);

fn parse_u32_text(s: &str) -> Option<u32> {
    parse_u64_text(s).and_then(|v| u32::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct T {
        #[serde(default, deserialize_with = "opt_u64")]
        n: Option<u64>,
        #[serde(default, deserialize_with = "opt_f64")]
        f: Option<f64>,
        #[serde(default, deserialize_with = "opt_bool")]
        b: Option<bool>,
    }

    #[test]
    fn accepts_yaml11_and_text_spellings() {
        let t: T = serde_json::from_str(r#"{"n":"20_000","f":"0.5","b":"True"}"#).unwrap();
        assert_eq!((t.n, t.f, t.b), (Some(20000), Some(0.5), Some(true)));
        let t: T = serde_json::from_str(r#"{"n":3,"f":2,"b":false}"#).unwrap();
        assert_eq!((t.n, t.f, t.b), (Some(3), Some(2.0), Some(false)));
        let t: T = serde_json::from_str(r#"{"n":null}"#).unwrap();
        assert_eq!(t.n, None);
        assert!(serde_json::from_str::<T>(r#"{"n":"lots"}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"n":-1}"#).is_err());
    }
}
