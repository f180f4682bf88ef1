//! How to interpret a column's type: the builtin types pgbridge decodes
//! itself, and the user-defined shapes (enums, domains, arrays) a caller can
//! describe from `pg_type`.
//!
//! A Relation message carries only type OIDs. Builtin OIDs are fixed across
//! PostgreSQL versions, so [`TypeInfo::builtin`] knows them without a catalog
//! query; every other OID must be looked up in `pg_type` by the caller and
//! described with [`TypeInfo::from_catalog`]. An OID nobody described is
//! [`TypeKind::Other`]: its text form passes through unchanged, which is always
//! safe, just untyped.

use std::fmt;
use std::sync::Arc;

/// The builtin scalar types with a dedicated decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Builtin {
    Bool,
    Bytea,
    /// `"char"`: the one-byte internal type, not `char(n)` (that is [`Builtin::Bpchar`]).
    Char,
    Name,
    Int8,
    Int2,
    Int4,
    Text,
    Oid,
    Json,
    Float4,
    Float8,
    Bpchar,
    Varchar,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Interval,
    TimeTz,
    Numeric,
    Uuid,
    Jsonb,
}

/// (scalar oid, scalar typname, array oid, array typname, builtin)
const BUILTINS: &[(u32, &str, u32, &str, Builtin)] = &[
    (16, "bool", 1000, "_bool", Builtin::Bool),
    (17, "bytea", 1001, "_bytea", Builtin::Bytea),
    (18, "char", 1002, "_char", Builtin::Char),
    (19, "name", 1003, "_name", Builtin::Name),
    (20, "int8", 1016, "_int8", Builtin::Int8),
    (21, "int2", 1005, "_int2", Builtin::Int2),
    (23, "int4", 1007, "_int4", Builtin::Int4),
    (25, "text", 1009, "_text", Builtin::Text),
    (26, "oid", 1028, "_oid", Builtin::Oid),
    (114, "json", 199, "_json", Builtin::Json),
    (700, "float4", 1021, "_float4", Builtin::Float4),
    (701, "float8", 1022, "_float8", Builtin::Float8),
    (1042, "bpchar", 1014, "_bpchar", Builtin::Bpchar),
    (1043, "varchar", 1015, "_varchar", Builtin::Varchar),
    (1082, "date", 1182, "_date", Builtin::Date),
    (1083, "time", 1183, "_time", Builtin::Time),
    (1114, "timestamp", 1115, "_timestamp", Builtin::Timestamp),
    (
        1184,
        "timestamptz",
        1185,
        "_timestamptz",
        Builtin::TimestampTz,
    ),
    (1186, "interval", 1187, "_interval", Builtin::Interval),
    (1266, "timetz", 1270, "_timetz", Builtin::TimeTz),
    (1700, "numeric", 1231, "_numeric", Builtin::Numeric),
    (2950, "uuid", 2951, "_uuid", Builtin::Uuid),
    (3802, "jsonb", 3807, "_jsonb", Builtin::Jsonb),
];

/// `int2vector` and `oidvector` are catalogued as arrays (`typcategory = 'A'`)
/// but print as space-separated lists, not `{...}`: never treat them as arrays.
const VECTOR_TYPE_OIDS: [u32; 2] = [22, 30];

impl Builtin {
    /// The builtin scalar type with this OID, if any.
    pub fn from_oid(oid: u32) -> Option<Builtin> {
        BUILTINS.iter().find(|(o, ..)| *o == oid).map(|&(.., b)| b)
    }

    fn entry(self) -> (u32, &'static str, u32, &'static str) {
        BUILTINS
            .iter()
            .find(|(.., b)| *b == self)
            .map(|&(o, n, ao, an, _)| (o, n, ao, an))
            // Every variant has a row in BUILTINS (checked by a test).
            .unwrap_or((0, "unknown", 0, "_unknown"))
    }

    /// The type's OID (`pg_type.oid`).
    pub fn oid(self) -> u32 {
        self.entry().0
    }

    /// The type's `pg_type.typname`, e.g. `int4`, `timestamptz`.
    pub fn name(self) -> &'static str {
        self.entry().1
    }

    /// The OID of the one-dimensional-or-more array of this type (`_int4` …).
    pub fn array_oid(self) -> u32 {
        self.entry().2
    }
}

/// What a type is, as far as decoding is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeKind {
    /// A builtin scalar decoded natively.
    Builtin(Builtin),
    /// A user enum: both wire forms carry the label.
    Enum,
    /// A domain: values are sent exactly as its base type's.
    Domain { base: Box<TypeInfo> },
    /// An array (any number of dimensions) of `elem`.
    Array { elem: Box<TypeInfo> },
    /// Anything else (ranges, composites, geometric, extension types …):
    /// text passes through, binary is kept as raw bytes.
    Other,
}

/// A column type: its OID, its `pg_type.typname` for display and errors, and
/// how to decode it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeInfo {
    oid: u32,
    name: Arc<str>,
    kind: TypeKind,
}

impl TypeInfo {
    /// The builtin type (scalar or array of a builtin scalar) with this OID,
    /// or `None` when the OID is not one of the builtins listed in
    /// [`Builtin`] or their array types. Never needs a catalog query.
    pub fn builtin(oid: u32) -> Option<TypeInfo> {
        if let Some(b) = Builtin::from_oid(oid) {
            return Some(Self::from_builtin(b));
        }
        BUILTINS
            .iter()
            .find(|(_, _, ao, ..)| *ao == oid)
            .map(|&(_, _, ao, an, b)| TypeInfo {
                oid: ao,
                name: Arc::from(an),
                kind: TypeKind::Array {
                    elem: Box::new(Self::from_builtin(b)),
                },
            })
    }

    /// The scalar type info of a builtin.
    pub fn from_builtin(b: Builtin) -> TypeInfo {
        TypeInfo {
            oid: b.oid(),
            name: Arc::from(b.name()),
            kind: TypeKind::Builtin(b),
        }
    }

    /// Describes a type from its `pg_type` row, as a caller that looked it up
    /// sees it:
    ///
    /// - `typtype = 'e'` → [`TypeKind::Enum`];
    /// - `typtype = 'd'` with `base` (the [`TypeInfo`] of `typbasetype`) →
    ///   [`TypeKind::Domain`]; a domain whose base is not given is `Other`;
    /// - `elem` given (pass it only for true arrays: `typcategory = 'A'` and
    ///   `typelem <> 0`) → [`TypeKind::Array`];
    /// - anything else → [`TypeKind::Other`].
    ///
    /// Builtin OIDs always resolve to the builtin description, whatever the
    /// other arguments say, and `int2vector`/`oidvector` are never arrays.
    pub fn from_catalog(
        oid: u32,
        typtype: char,
        typname: &str,
        base: Option<TypeInfo>,
        elem: Option<TypeInfo>,
    ) -> TypeInfo {
        if let Some(b) = Self::builtin(oid) {
            return b;
        }
        let kind = match (typtype, base, elem) {
            ('e', ..) => TypeKind::Enum,
            ('d', Some(base), _) => TypeKind::Domain {
                base: Box::new(base),
            },
            ('d', None, _) => TypeKind::Other,
            (_, _, Some(elem)) if !VECTOR_TYPE_OIDS.contains(&oid) => TypeKind::Array {
                elem: Box::new(elem),
            },
            _ => TypeKind::Other,
        };
        TypeInfo {
            oid,
            name: Arc::from(typname),
            kind,
        }
    }

    /// A type decoded as [`TypeKind::Other`]: text passes through verbatim,
    /// binary is kept as raw bytes.
    pub fn other(oid: u32, typname: &str) -> TypeInfo {
        TypeInfo {
            oid,
            name: Arc::from(typname),
            kind: TypeKind::Other,
        }
    }

    /// The type's OID.
    pub fn oid(&self) -> u32 {
        self.oid
    }

    /// The type's `pg_type.typname` (`int4`, `_int4`, `mood` …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shared name, cheap to clone into values that carry it.
    pub(crate) fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// How values of this type are decoded.
    pub fn kind(&self) -> &TypeKind {
        &self.kind
    }

    /// The type with all domain layers removed.
    pub fn without_domains(&self) -> &TypeInfo {
        let mut t = self;
        while let TypeKind::Domain { base } = &t.kind {
            t = base;
        }
        t
    }
}

impl fmt::Display for TypeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_has_a_table_row() {
        use Builtin::*;
        let all = [
            Bool,
            Bytea,
            Char,
            Name,
            Int8,
            Int2,
            Int4,
            Text,
            Oid,
            Json,
            Float4,
            Float8,
            Bpchar,
            Varchar,
            Date,
            Time,
            Timestamp,
            TimestampTz,
            Interval,
            TimeTz,
            Numeric,
            Uuid,
            Jsonb,
        ];
        assert_eq!(all.len(), BUILTINS.len());
        for b in all {
            assert_ne!(b.oid(), 0, "{b:?}");
            assert_eq!(Builtin::from_oid(b.oid()), Some(b));
        }
    }

    #[test]
    fn builtin_scalars_and_arrays() {
        let t = TypeInfo::builtin(1184).unwrap();
        assert_eq!(t.name(), "timestamptz");
        assert_eq!(t.kind(), &TypeKind::Builtin(Builtin::TimestampTz));

        let cases = [
            (1000, 16),
            (1001, 17),
            (1002, 18),
            (1003, 19),
            (1005, 21),
            (1007, 23),
            (1009, 25),
            (1014, 1042),
            (1015, 1043),
            (1016, 20),
            (1021, 700),
            (1022, 701),
            (1028, 26),
            (1115, 1114),
            (1182, 1082),
            (1183, 1083),
            (1185, 1184),
            (1187, 1186),
            (1231, 1700),
            (1270, 1266),
            (2951, 2950),
            (199, 114),
            (3807, 3802),
        ];
        for (arr, elem) in cases {
            let t = TypeInfo::builtin(arr).unwrap();
            match t.kind() {
                TypeKind::Array { elem: e } => assert_eq!(e.oid(), elem, "{arr}"),
                k => panic!("{arr}: {k:?}"),
            }
            assert!(t.name().starts_with('_'));
        }
        assert!(TypeInfo::builtin(600).is_none()); // point
        assert!(TypeInfo::builtin(0).is_none());
    }

    #[test]
    fn catalog_shapes() {
        let e = TypeInfo::from_catalog(16400, 'e', "mood", None, None);
        assert_eq!(e.kind(), &TypeKind::Enum);

        let d = TypeInfo::from_catalog(16401, 'd', "posint", TypeInfo::builtin(23), None);
        assert_eq!(d.without_domains().oid(), 23);
        let dd = TypeInfo::from_catalog(16402, 'd', "small_posint", Some(d.clone()), None);
        assert_eq!(dd.without_domains().oid(), 23);
        assert_eq!(dd.to_string(), "small_posint");

        let a = TypeInfo::from_catalog(16403, 'b', "_mood", None, Some(e));
        assert!(matches!(a.kind(), TypeKind::Array { .. }));

        let r = TypeInfo::from_catalog(3904, 'r', "int4range", None, None);
        assert_eq!(r.kind(), &TypeKind::Other);
        let v = TypeInfo::from_catalog(22, 'b', "int2vector", None, TypeInfo::builtin(21));
        assert_eq!(v.kind(), &TypeKind::Other);
        let no_base = TypeInfo::from_catalog(16404, 'd', "d", None, None);
        assert_eq!(no_base.kind(), &TypeKind::Other);

        // A builtin OID wins over whatever the catalog row claims.
        let b = TypeInfo::from_catalog(23, 'e', "whatever", None, None);
        assert_eq!(b.kind(), &TypeKind::Builtin(Builtin::Int4));
    }
}
