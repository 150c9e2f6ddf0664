#[test]
fn dbg() {
    let f = std::env::var("F").unwrap();
    let raw = std::fs::read(&f).unwrap();
    let msg = mail_parser::MessageParser::default()
        .parse(&raw[..])
        .unwrap();
    use mail_parser::MimeHeaders;
    for (i, p) in msg.parts.iter().enumerate() {
        let ct = p
            .content_type()
            .map(|c| format!("{}/{:?}", c.c_type, c.c_subtype));
        let kind = match &p.body {
            mail_parser::PartType::Text(t) => format!("Text {}", t.len()),
            mail_parser::PartType::Html(_) => "Html".into(),
            mail_parser::PartType::Binary(b) => format!("Bin {}", b.len()),
            mail_parser::PartType::InlineBinary(b) => format!("IBin {}", b.len()),
            mail_parser::PartType::Message(_) => "Msg".into(),
            mail_parser::PartType::Multipart(v) => format!("Multi {v:?}"),
        };
        println!("{i} {ct:?} {kind}");
    }
    println!("{:#?}", blast::dsn::classify(&raw));
}
