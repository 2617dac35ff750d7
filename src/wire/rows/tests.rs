//! Text and binary encodings checked against what PostgreSQL sends.

use super::values::*;

use super::*;

fn text_of(array: ArrayRef) -> Vec<Option<String>> {
    let batch = RecordBatch::try_from_iter([("c", array)]).unwrap();
    let prepared = Prepared::new(&batch).unwrap();
    let enc = BatchEncoder::new(&prepared, batch.num_rows(), &[Format::Text]).unwrap();
    let mut res = vec![];
    for r in 0..batch.num_rows() {
        let mut out = BytesMut::new();
        enc.write_row(r, &mut out, &EncodeOptions::default());
        let len = i32::from_be_bytes(out[7..11].try_into().unwrap());
        res.push((len >= 0).then(|| String::from_utf8(out[11..].to_vec()).unwrap()));
    }
    res
}

fn float_text(v: f64, f32_: bool) -> String {
    let mut out = BytesMut::new();
    write_float(&mut out, v, f32_);
    String::from_utf8(out.to_vec()).unwrap()
}

#[test]
fn floats_print_like_postgres() {
    for (v, want) in [
        (1.0, "1"),
        (-2.5, "-2.5"),
        (0.1, "0.1"),
        (1e15, "1e+15"),
        (123456789012345.0, "123456789012345"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1.5e-7, "1.5e-07"),
        (1e100, "1e+100"),
        (0.0, "0"),
        (f64::NAN, "NaN"),
        (f64::NEG_INFINITY, "-Infinity"),
        (12.34, "12.34"),
    ] {
        assert_eq!(float_text(v, false), want, "{v}");
    }
    assert_eq!(float_text(1e6, true), "1e+06");
    assert_eq!(float_text(0.1f32 as f64, true), "0.1");
}

#[test]
fn scalars_print_like_postgres() {
    let ts = Arc::new(TimestampMicrosecondArray::from(vec![
        Some(1_700_000_000_123_000),
        None,
    ]));
    assert_eq!(
        text_of(ts),
        vec![Some("2023-11-14 22:13:20.123".into()), None]
    );
    let d = Arc::new(Date32Array::from(vec![19_000]));
    assert_eq!(text_of(d), vec![Some("2022-01-08".into())]);
    let b = Arc::new(BooleanArray::from(vec![true, false]));
    assert_eq!(text_of(b), vec![Some("t".into()), Some("f".into())]);
    let dec = Arc::new(
        Decimal128Array::from(vec![150, -5, 0])
            .with_precision_and_scale(10, 2)
            .unwrap(),
    );
    assert_eq!(
        text_of(dec),
        vec![
            Some("1.50".into()),
            Some("-0.05".into()),
            Some("0.00".into())
        ]
    );
    let bin = Arc::new(BinaryArray::from(vec![&b"\x01\xab"[..]]));
    assert_eq!(text_of(bin), vec![Some("\\x01ab".into())]);
    let tz = Arc::new(TimestampMicrosecondArray::from(vec![0]).with_timezone("UTC"));
    assert_eq!(text_of(tz), vec![Some("1970-01-01 00:00:00+00".into())]);
}

#[test]
fn intervals_print_like_postgres() {
    let mut out = BytesMut::new();
    write_interval(
        &mut out,
        14,
        3,
        4 * 3_600_000_000 + 5 * 60_000_000 + 6_500_000,
    );
    assert_eq!(&out[..], b"1 year 2 mons 3 days 04:05:06.5");
    out.clear();
    write_interval(&mut out, 0, 0, 0);
    assert_eq!(&out[..], b"00:00:00");
    out.clear();
    write_interval(&mut out, 0, 1, -3_600_000_000);
    assert_eq!(&out[..], b"1 day -01:00:00");
}

#[test]
fn arrays_quote_like_postgres() {
    let list = Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
        Some(vec![Some(1), None, Some(3)]),
        Some(vec![]),
    ]));
    assert_eq!(
        text_of(list),
        vec![Some("{1,NULL,3}".into()), Some("{}".into())]
    );
    let values = StringArray::from(vec!["a b", "", "x\"y", "plain"]);
    let offsets = datafusion::arrow::buffer::OffsetBuffer::new(vec![0, 4].into());
    let l = ListArray::new(
        Arc::new(Field::new("item", DataType::Utf8, true)),
        offsets,
        Arc::new(values),
        None,
    );
    assert_eq!(
        text_of(Arc::new(l)),
        vec![Some(r#"{"a b","","x\"y",plain}"#.into())]
    );
}

#[test]
fn structs_become_json() {
    let s = StructArray::from(vec![
        (
            Arc::new(Field::new("a", DataType::Int32, true)),
            Arc::new(Int32Array::from(vec![1])) as ArrayRef,
        ),
        (
            Arc::new(Field::new("b", DataType::Utf8, true)),
            Arc::new(StringArray::from(vec!["x"])) as ArrayRef,
        ),
    ]);
    assert_eq!(
        text_of(Arc::new(s)),
        vec![Some(r#"{"a":1,"b":"x"}"#.into())]
    );
}

fn numeric_binary(v: i128, scale: i8) -> Vec<i16> {
    let mut out = BytesMut::new();
    write_numeric_binary(&mut out, v, scale);
    out.chunks(2)
        .map(|c| i16::from_be_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn numeric_binary_matches_postgres_layout() {
    // 12345.678 → ndigits 3, weight 1, +, dscale 3, digits [1, 2345, 6780]
    assert_eq!(
        numeric_binary(12_345_678, 3),
        vec![3, 1, 0, 3, 1, 2345, 6780]
    );
    // -0.05 (scale 2) → ndigits 1, weight -1, -, dscale 2, [500]
    assert_eq!(numeric_binary(-5, 2), vec![1, -1, 0x4000, 2, 500]);
    // 0 → no digits
    assert_eq!(numeric_binary(0, 2), vec![0, 0, 0, 2]);
    // 10000 (scale 0) → [1], weight 1
    assert_eq!(numeric_binary(10_000, 0), vec![1, 1, 0, 0, 1]);
}
