//! The structure of array values in both wire forms: dimensions, lower
//! bounds and the elements' raw text or bytes, in row-major order. Element
//! decoding is the caller's (it depends on the element type).
//!
//! Text form (`array_out`): optional `[lo:hi]...=` decoration when some lower
//! bound is not 1, nested `{...}` with `,` between elements, `NULL` unquoted
//! for nulls, elements double-quoted with `\` escapes when they contain
//! special characters. The parser follows `array_in`: whitespace around
//! elements is ignored, unquoted elements may use `\` escapes, and the nesting
//! must be rectangular.
//!
//! Binary form (`array_send`): ndim i32, has-null flag i32, element type OID,
//! then (length i32, lower bound i32) per dimension, then per element a
//! length i32 (−1 for NULL) and that many bytes.

use bytes::Bytes;

use super::datetime::Reason;

/// PostgreSQL's MAXDIM.
pub(crate) const MAX_DIMS: usize = 6;
/// PostgreSQL's MaxArraySize (elements).
const MAX_ELEMENTS: usize = 0x3FF_FFFF / 8;

/// One dimension as read from the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawDim {
    pub len: usize,
    pub lower: i32,
}

/// An array's shape and its undecoded elements (`None` = SQL NULL).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RawArray<E> {
    pub elem_oid: Option<u32>,
    pub dims: Vec<RawDim>,
    pub elements: Vec<Option<E>>,
}

fn product(dims: &[RawDim]) -> Result<usize, Reason> {
    dims.iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(d.len))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| "array size exceeds the maximum allowed".to_string())
}

fn check_bounds(dims: &[RawDim]) -> Result<(), Reason> {
    for d in dims {
        let len = i64::try_from(d.len).map_err(|_| "array too large".to_string())?;
        if i64::from(d.lower) + len - 1 > i64::from(i32::MAX) {
            return Err("array upper bound is too large".into());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Binary

fn be_i32(b: &[u8], at: &mut usize) -> Result<i32, Reason> {
    let v = match b.get(*at..*at + 4) {
        Some(&[w, x, y, z]) => i32::from_be_bytes([w, x, y, z]),
        _ => return Err("array value is truncated".into()),
    };
    *at += 4;
    Ok(v)
}

/// Parses `array_send` output. Element slices share `data`'s buffer.
pub(crate) fn parse_binary(data: &Bytes) -> Result<RawArray<Bytes>, Reason> {
    let b: &[u8] = data;
    let mut at = 0;
    let ndim = be_i32(b, &mut at)?;
    let flags = be_i32(b, &mut at)?;
    let elem_oid = be_i32(b, &mut at)? as u32;
    if ndim < 0 || ndim as usize > MAX_DIMS {
        return Err(format!("invalid number of dimensions {ndim}"));
    }
    if flags != 0 && flags != 1 {
        return Err(format!("invalid array flags {flags}"));
    }
    let mut dims = Vec::with_capacity(ndim as usize);
    for _ in 0..ndim {
        let len = be_i32(b, &mut at)?;
        let lower = be_i32(b, &mut at)?;
        let len = usize::try_from(len).map_err(|_| format!("negative dimension length {len}"))?;
        dims.push(RawDim { len, lower });
    }
    check_bounds(&dims)?;
    let n = if dims.is_empty() { 0 } else { product(&dims)? };
    if n == 0 {
        // PostgreSQL turns any array with a zero-length dimension into the
        // dimensionless empty array.
        dims.clear();
    }
    // Each element needs at least its 4-byte length: reject impossible
    // counts before allocating for them.
    if n > b.len().saturating_sub(at) / 4 {
        return Err("array value is truncated".into());
    }
    let mut elements = Vec::with_capacity(n);
    for _ in 0..n {
        let len = be_i32(b, &mut at)?;
        if len == -1 {
            elements.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| format!("invalid element length {len}"))?;
        let end = at
            .checked_add(len)
            .filter(|&e| e <= b.len())
            .ok_or("array value is truncated")?;
        elements.push(Some(data.slice(at..end)));
        at = end;
    }
    if at != b.len() {
        return Err("trailing bytes after the last array element".into());
    }
    Ok(RawArray {
        elem_oid: Some(elem_oid),
        dims,
        elements,
    })
}

// ---------------------------------------------------------------------------
// Text

struct TextParser<'a> {
    s: &'a [u8],
    pos: usize,
    /// Depth of the innermost lists (where the elements are), once known.
    ndim: Option<usize>,
    /// Length of the lists at each depth, once known.
    lens: Vec<Option<usize>>,
    elements: Vec<Option<String>>,
}

fn is_space(c: u8) -> bool {
    // array_in uses scanner_isspace: space, \t, \n, \r, \v, \f.
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

impl TextParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
    }

    fn int(&mut self) -> Result<i32, Reason> {
        let start = self.pos;
        if self.peek() == Some(b'-') || self.peek() == Some(b'+') {
            self.pos += 1;
        }
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        std::str::from_utf8(self.s.get(start..self.pos).unwrap_or(&[]))
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| "invalid array dimension bound".to_string())
    }

    /// `[lo:hi][lo:hi]...=` (or `[hi]` meaning `[1:hi]`).
    fn decoration(&mut self) -> Result<Vec<(i32, i32)>, Reason> {
        let mut out = Vec::new();
        while self.peek() == Some(b'[') {
            if out.len() == MAX_DIMS {
                return Err("too many array dimensions".into());
            }
            self.pos += 1;
            self.skip_ws();
            let first = self.int()?;
            self.skip_ws();
            let (lo, hi) = if self.peek() == Some(b':') {
                self.pos += 1;
                self.skip_ws();
                let hi = self.int()?;
                self.skip_ws();
                (first, hi)
            } else {
                (1, first)
            };
            if self.peek() != Some(b']') {
                return Err("malformed array dimensions".into());
            }
            self.pos += 1;
            if hi < lo {
                return Err("array upper bound below lower bound".into());
            }
            out.push((lo, hi));
            self.skip_ws();
        }
        if self.peek() != Some(b'=') {
            return Err("missing '=' after array dimensions".into());
        }
        self.pos += 1;
        Ok(out)
    }

    fn record_len(&mut self, depth: usize, n: usize) -> Result<(), Reason> {
        if self.lens.len() < depth {
            self.lens.resize(depth, None);
        }
        let slot = self
            .lens
            .get_mut(depth - 1)
            .ok_or("internal array depth error")?;
        match *slot {
            None => *slot = Some(n),
            Some(m) if m == n => {}
            Some(_) => {
                return Err(
                    "multidimensional arrays must have sub-arrays with matching dimensions".into(),
                )
            }
        }
        Ok(())
    }

    /// A `{...}` list at `depth` (1 = outermost); the `{` is consumed.
    fn list(&mut self, depth: usize) -> Result<usize, Reason> {
        if depth > MAX_DIMS {
            return Err("too many array dimensions".into());
        }
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            if depth == 1 {
                return Ok(0);
            }
            return Err("empty sub-array".into());
        }
        let mut count = 0;
        loop {
            self.skip_ws();
            if self.peek() == Some(b'{') {
                if self.ndim.is_some_and(|n| depth >= n) {
                    return Err("unexpected '{' at element level".into());
                }
                self.pos += 1;
                let n = self.list(depth + 1)?;
                self.record_len(depth + 1, n)?;
            } else {
                match self.ndim {
                    None => self.ndim = Some(depth),
                    Some(n) if n == depth => {}
                    Some(_) => return Err("element where a sub-array was expected".into()),
                }
                let e = self.element()?;
                if self.elements.len() >= MAX_ELEMENTS {
                    return Err("array size exceeds the maximum allowed".into());
                }
                self.elements.push(e);
            }
            count += 1;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(count);
                }
                _ => return Err("expected ',' or '}'".into()),
            }
        }
    }

    fn element(&mut self) -> Result<Option<String>, Reason> {
        let mut buf = Vec::new();
        if self.peek() == Some(b'"') {
            self.pos += 1;
            loop {
                match self.peek() {
                    None => return Err("unterminated quoted array element".into()),
                    Some(b'"') => {
                        self.pos += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let c = self
                            .s
                            .get(self.pos + 1)
                            .ok_or("unterminated quoted array element")?;
                        buf.push(*c);
                        self.pos += 2;
                    }
                    Some(c) => {
                        buf.push(c);
                        self.pos += 1;
                    }
                }
            }
            return String::from_utf8(buf)
                .map(Some)
                .map_err(|_| "array element is not valid UTF-8".into());
        }
        // Unquoted: up to an unescaped ',' or '}', trailing unescaped
        // whitespace removed.
        let mut keep = 0; // buf length up to the last non-blank or escaped char
        let mut escaped_any = false;
        loop {
            match self.peek() {
                None => return Err("unterminated array".into()),
                Some(b',' | b'}') => break,
                Some(b'{' | b'"') => {
                    return Err("unexpected character in unquoted array element".into())
                }
                Some(b'\\') => {
                    let c = self.s.get(self.pos + 1).ok_or("unterminated array")?;
                    buf.push(*c);
                    keep = buf.len();
                    escaped_any = true;
                    self.pos += 2;
                }
                Some(c) => {
                    buf.push(c);
                    if !is_space(c) {
                        keep = buf.len();
                    }
                    self.pos += 1;
                }
            }
        }
        buf.truncate(keep);
        if buf.is_empty() {
            return Err("empty unquoted array element".into());
        }
        if !escaped_any && buf.eq_ignore_ascii_case(b"NULL") {
            return Ok(None);
        }
        String::from_utf8(buf)
            .map(Some)
            .map_err(|_| "array element is not valid UTF-8".into())
    }
}

/// Parses `array_out` text into its shape and element texts.
pub(crate) fn parse_text(s: &str) -> Result<RawArray<String>, Reason> {
    let mut p = TextParser {
        s: s.as_bytes(),
        pos: 0,
        ndim: None,
        lens: Vec::new(),
        elements: Vec::new(),
    };
    p.skip_ws();
    let decoration = if p.peek() == Some(b'[') {
        Some(p.decoration()?)
    } else {
        None
    };
    p.skip_ws();
    if p.peek() != Some(b'{') {
        return Err("array value must start with '{' or dimension information".into());
    }
    p.pos += 1;
    let n = p.list(1)?;
    p.skip_ws();
    if p.pos != p.s.len() {
        return Err("junk after closing right brace".into());
    }
    if n == 0 {
        if decoration.is_some() {
            return Err("dimension information given for an empty array".into());
        }
        return Ok(RawArray {
            elem_oid: None,
            dims: Vec::new(),
            elements: Vec::new(),
        });
    }
    p.record_len(1, n)?;
    let ndim = p.ndim.ok_or("array without elements")?;
    let lens: Vec<usize> = p.lens.iter().take(ndim).map(|l| l.unwrap_or(0)).collect();
    let dims: Vec<RawDim> = match decoration {
        None => lens.iter().map(|&len| RawDim { len, lower: 1 }).collect(),
        Some(dec) => {
            if dec.len() != ndim {
                return Err("dimension information does not match the array contents".into());
            }
            let mut dims = Vec::with_capacity(ndim);
            for (&(lo, hi), &len) in dec.iter().zip(&lens) {
                if i64::from(hi) - i64::from(lo) + 1 != len as i64 {
                    return Err("dimension information does not match the array contents".into());
                }
                dims.push(RawDim { len, lower: lo });
            }
            dims
        }
    };
    check_bounds(&dims)?;
    if product(&dims)? != p.elements.len() {
        return Err("multidimensional arrays must have sub-arrays with matching dimensions".into());
    }
    Ok(RawArray {
        elem_oid: None,
        dims,
        elements: p.elements,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(v: &[(usize, i32)]) -> Vec<RawDim> {
        v.iter()
            .map(|&(len, lower)| RawDim { len, lower })
            .collect()
    }

    fn s(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|e| e.map(str::to_string)).collect()
    }

    #[test]
    fn text_shapes() {
        let a = parse_text("{1,2,NULL}").unwrap();
        assert_eq!(a.dims, dims(&[(3, 1)]));
        assert_eq!(a.elements, s(&[Some("1"), Some("2"), None]));

        let a = parse_text("{{1,2},{3,4}}").unwrap();
        assert_eq!(a.dims, dims(&[(2, 1), (2, 1)]));
        assert_eq!(a.elements.len(), 4);

        let a = parse_text("[0:1]={1,2}").unwrap();
        assert_eq!(a.dims, dims(&[(2, 0)]));

        let a = parse_text("[1:2][0:0][-1:0]={{{1,2}},{{3,4}}}").unwrap();
        assert_eq!(a.dims, dims(&[(2, 1), (1, 0), (2, -1)]));
        assert_eq!(a.elements, s(&[Some("1"), Some("2"), Some("3"), Some("4")]));

        let a = parse_text("{}").unwrap();
        assert!(a.dims.is_empty() && a.elements.is_empty());

        let a = parse_text(r#"{"a,b","c\\\"d",NULL,"NULL",""," sp ",\N\ULL, x y ,nUlL}"#).unwrap();
        assert_eq!(
            a.elements,
            s(&[
                Some("a,b"),
                Some("c\\\"d"),
                None,
                Some("NULL"),
                Some(""),
                Some(" sp "),
                Some("NULL"),
                Some("x y"),
                None
            ])
        );

        let a = parse_text(" { { 1 , 2 } , { 3 , 4 } } ").unwrap();
        assert_eq!(a.dims, dims(&[(2, 1), (2, 1)]));
        assert_eq!(parse_text("[3]={1,2,3}").unwrap().dims, dims(&[(3, 1)]));
    }

    #[test]
    fn text_malformed() {
        for bad in [
            "",
            "1,2",
            "{",
            "{1,2",
            "{1,2}}",
            "{1,2} x",
            "{,}",
            "{1,}",
            "{{1,2},3}",
            "{1,{2}}",
            "{{1,2},{3}}",
            "{{1},{2,3}}",
            "{{}}",
            "{{1},{}}",
            "{\"a}",
            "{a\"b}",
            "{a\\",
            "[0:2]={1,2}",
            "[1:2][1:1]={1,2}",
            "[2:1]={}",
            "[1:1]={}",
            "[1:1]{1}",
            "[x]={1}",
            "[2147483647:2147483648]={1,2}",
            "[2147483647:2147483647]={1}x",
            "{{{{{{{1}}}}}}}",
            "[1][1][1][1][1][1][1]={{{{{{{1}}}}}}}",
        ] {
            assert!(parse_text(bad).is_err(), "{bad:?}");
        }
        assert!(parse_text("{{{{{{1}}}}}}").is_ok());
        assert!(parse_text("[2147483647:2147483647]={1}").is_ok());
    }

    #[test]
    fn binary_shapes() {
        let b = Bytes::from_static(&[
            0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 23, 0, 0, 0, 2, 0, 0, 0, 0, //
            0, 0, 0, 4, 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff,
        ]);
        let a = parse_binary(&b).unwrap();
        assert_eq!(a.elem_oid, Some(23));
        assert_eq!(a.dims, dims(&[(2, 0)]));
        assert_eq!(
            a.elements,
            vec![Some(Bytes::from_static(&[0, 0, 0, 7])), None]
        );

        // A zero-length dimension is the empty array.
        let b = Bytes::from_static(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 23, 0, 0, 0, 0, 0, 0, 0, 1]);
        let a = parse_binary(&b).unwrap();
        assert!(a.dims.is_empty() && a.elements.is_empty());
    }

    #[test]
    fn binary_malformed() {
        let cases: &[&[u8]] = &[
            &[],
            &[0, 0, 0, 1],
            &[0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 23],
            &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 23],
            &[0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 23],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0],
            // one dim of length -1
            &[
                0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 23, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1,
            ],
            // claims 2^30 elements
            &[
                0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 23, 0x40, 0, 0, 0, 0, 0, 0, 1,
            ],
            // element length beyond the end
            &[
                0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 23, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 1,
            ],
            // element length -2
            &[
                0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 23, 0, 0, 0, 1, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xfe,
            ],
            // upper bound overflow
            &[
                0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 23, 0, 0, 0, 2, 0x7f, 0xff, 0xff, 0xff, 0xff,
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
        ];
        for c in cases {
            assert!(parse_binary(&Bytes::copy_from_slice(c)).is_err(), "{c:?}");
        }
    }
}
