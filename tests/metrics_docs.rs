//! The README's metrics table and a freshly started proxy's `/metrics`
//! agree, both ways: every documented family is there from the first
//! scrape with every documented label combination, and nothing is there
//! that the table does not document.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One row of the README table.
#[derive(Debug)]
struct Documented {
    /// As samples are named (a histogram's with `_count` and the like).
    name: String,
    kind: String,
    /// Label name to its values; empty values: any value (`version`).
    labels: BTreeMap<String, Vec<String>>,
}

impl Documented {
    /// The name of the `# TYPE` line: in the Prometheus text format, a
    /// counter's is its samples' (`..._total`).
    fn family(&self) -> &str {
        &self.name
    }

    /// The sample that carries one series: a histogram's `_count`.
    fn sample_name(&self) -> String {
        match self.kind.as_str() {
            "histogram" => format!("{}_count", self.name),
            _ => self.name.clone(),
        }
    }

    /// Every combination of the listed values, free-valued labels left out.
    fn combinations(&self) -> Vec<BTreeMap<String, String>> {
        let mut all = vec![BTreeMap::new()];
        for (label, values) in self.labels.iter().filter(|(_, v)| !v.is_empty()) {
            all = all
                .into_iter()
                .flat_map(|partial| {
                    values.iter().map(move |value| {
                        let mut next = partial.clone();
                        next.insert(label.clone(), value.clone());
                        next
                    })
                })
                .collect();
        }
        all
    }
}

fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// `` `a` = `x`, `y`; `b` `` is a label `a` with values x, y and a
/// free-valued label `b`.
fn parse_labels(cell: &str) -> BTreeMap<String, Vec<String>> {
    cell.split(';')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let (name, values) = part.split_once('=').unwrap_or((part, ""));
            let name = code_spans(name).concat();
            (name, code_spans(values))
        })
        .collect()
}

fn documented() -> Vec<Documented> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Metrics section");
    let rows: Vec<Documented> = section
        .lines()
        .filter(|line| line.starts_with("| `directline_proxy_"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            Documented {
                name: cells[1].trim_matches('`').to_owned(),
                kind: cells[2].to_owned(),
                labels: parse_labels(cells[3]),
            }
        })
        .collect();
    assert!(rows.len() > 10, "the metrics table was not found");
    rows
}

/// What a histogram appends to its family's name in its samples.
const SAMPLE_SUFFIXES: [&str; 4] = ["", "_bucket", "_count", "_sum"];

/// A sample line: its name and labels (`le` of histogram buckets left out).
type Sample = (String, BTreeMap<String, String>);

fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let series = line.rsplit_once(' ').map_or(line, |(series, _)| series);
            let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
            let labels = labels
                .trim_end_matches('}')
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .filter(|(label, _)| *label != "le")
                .map(|(label, value)| (label.to_owned(), value.trim_matches('"').to_owned()))
                .collect();
            (name.to_owned(), labels)
        })
        .collect()
}

/// `# TYPE` lines: family name to type.
fn parse_types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(family, kind)| (family.to_owned(), kind.to_owned()))
        .collect()
}

async fn fresh_metrics() -> String {
    let mut config = directline_proxy::config::Config::default();
    config.listen.addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.upstream.url = http::Uri::from_static("http://127.0.0.1:9");
    let proxy = directline_proxy::start(config).await.expect("proxy starts");
    let addr = proxy.base_url().trim_start_matches("http://").to_owned();
    let mut socket = TcpStream::connect(&addr).await.expect("connect");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    socket.read_to_string(&mut response).await.expect("read");
    proxy.shutdown().await;
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    body.to_owned()
}

#[tokio::test]
async fn a_fresh_start_shows_every_documented_family_and_label_combination() {
    let text = fresh_metrics().await;
    let types = parse_types(&text);
    let samples: BTreeSet<Sample> = parse_samples(&text).into_iter().collect();
    for row in documented() {
        assert_eq!(
            types.get(row.family()),
            Some(&row.kind),
            "{} is not a {} in\n{text}",
            row.family(),
            row.kind
        );
        for labels in row.combinations() {
            let present = samples.iter().any(|(name, got)| {
                *name == row.sample_name() && labels.iter().all(|(k, v)| got.get(k) == Some(v))
            });
            assert!(present, "no {} {labels:?} in\n{text}", row.sample_name());
        }
    }
}

#[tokio::test]
async fn a_fresh_start_shows_nothing_the_readme_does_not_document() {
    let text = fresh_metrics().await;
    let rows = documented();
    let families: BTreeSet<&str> = rows.iter().map(Documented::family).collect();
    for family in parse_types(&text).keys() {
        assert!(
            families.contains(family.as_str()),
            "{family} is not in the README's metrics table"
        );
    }
    for (name, labels) in parse_samples(&text) {
        let row = rows
            .iter()
            .find(|row| {
                SAMPLE_SUFFIXES
                    .iter()
                    .any(|suffix| name == format!("{}{suffix}", row.family()))
            })
            .unwrap_or_else(|| panic!("{name} belongs to no documented family"));
        let names: BTreeSet<&String> = labels.keys().collect();
        assert_eq!(
            names,
            row.labels.keys().collect(),
            "{name}: labels differ from the README's"
        );
        for (label, value) in &labels {
            let listed = &row.labels[label];
            assert!(
                listed.is_empty() || listed.contains(value),
                "{name}: {label}=\"{value}\" is not in the README's table"
            );
        }
    }
}
