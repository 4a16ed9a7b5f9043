//! Data sources: the synthetic corpus against its exact information-theoretic
//! numbers, batch determinism, file corpora (text, directory, `.u16`, Hugging
//! Face tokenizer) and every bad-input error.

use std::path::Path;

use switchyard::data::{Dataset, SyntheticSource, Tokenizer};
use switchyard::{Config, Error};

fn tiny() -> Config {
    Config::preset("tiny").expect("tiny preset")
}

/// A small order-3 corpus whose prefix terms (t < order - 1) matter.
fn order3() -> Config {
    let mut c = tiny();
    let s = &mut c.data.synthetic;
    s.domains = 3;
    s.domain_vocab = 6;
    s.order = 3;
    s.branching = 2;
    s.teleport = 0.05;
    s.seed = 11;
    c.model.vocab_size = 18;
    c
}

fn batch(ds: &Dataset, train: Option<(u64, u64)>, index: u64, b: usize, t: usize) -> (Vec<u32>, Vec<u32>) {
    // Poisoned: a batch that misses a slot would leave u32::MAX behind.
    let mut x = vec![u32::MAX; b * t];
    let mut y = vec![u32::MAX; b * t];
    match train {
        Some((step, micro)) => ds.train_batch(step, micro, b, t, &mut x, &mut y),
        None => ds.val_batch(index, b, t, &mut x, &mut y),
    }
    (x, y)
}

fn data_err(r: switchyard::Result<Dataset>) -> String {
    match r {
        Err(e @ Error::Data(_)) => e.to_string(),
        Err(e) => panic!("expected a data error, got: {e}"),
        Ok(_) => panic!("expected a data error, the source opened"),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error message lacks `{p}`: {msg}");
    }
}

fn file_cfg(source: &Path, seq: usize) -> Config {
    let mut c = tiny();
    c.data.source = source.display().to_string();
    c.train.seq_len = seq;
    c
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

/// A Hugging Face WordLevel tokenizer with `extra` filler words after `[UNK] hello world`.
fn hf_tokenizer(dir: &Path, extra: usize) -> String {
    let mut vocab = vec![r#""[UNK]":0"#.to_string(), r#""hello":1"#.into(), r#""world":2"#.into()];
    vocab.extend((0..extra).map(|i| format!(r#""w{i}":{}"#, i + 3)));
    let json = format!(
        r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
"pre_tokenizer":{{"type":"Whitespace"}},"post_processor":null,"decoder":null,
"model":{{"type":"WordLevel","vocab":{{{}}},"unk_token":"[UNK]"}}}}"#,
        vocab.join(",")
    );
    let path = dir.join(format!("tokenizer{extra}.json"));
    write(&path, json.as_bytes());
    path.display().to_string()
}

// ---------------------------------------------------------------- synthetic

#[test]
fn transition_rows_sum_to_one() {
    for cfg in [tiny(), order3()] {
        let src = SyntheticSource::new(&cfg.data.synthetic).unwrap();
        let floor = cfg.data.synthetic.teleport / src.domain_vocab() as f64;
        for d in 0..src.domains() {
            for s in 0..src.num_states() {
                let p = src.next_distribution(d, s);
                let total: f64 = p.iter().sum();
                // m + branching terms, each rounded once: error ~ 40 ulp.
                assert!((total - 1.0).abs() < 1e-13, "domain {d} state {s}: row sums to {total}");
                assert!(p.iter().all(|&x| x >= floor * (1.0 - 1e-12)), "teleport mass missing in {d}/{s}");
                let sparse = p.iter().filter(|&&x| x > floor * (1.0 + 1e-9)).count();
                assert!(sparse <= cfg.data.synthetic.branching);
            }
        }
    }
}

#[test]
fn stationary_distribution_is_a_fixed_point() {
    for cfg in [tiny(), order3()] {
        let src = SyntheticSource::new(&cfg.data.synthetic).unwrap();
        for d in 0..src.domains() {
            let pi = src.stationary(d);
            let total: f64 = pi.iter().sum();
            assert!((total - 1.0).abs() < 1e-12, "domain {d}: pi sums to {total}");
            let mut next = vec![0.0f64; pi.len()];
            for (s, &p) in pi.iter().enumerate() {
                for (c, q) in src.next_distribution(d, s).into_iter().enumerate() {
                    next[src.next_state(s, c)] += p * q;
                }
            }
            // Power iteration stops once one step moves pi by < 1e-12 in L1; P
            // is an L1 contraction, so the fixed-point residual is below that
            // plus rounding of the dense product (~1e-15 per state).
            let l1: f64 = next.iter().zip(pi).map(|(a, b)| (a - b).abs()).sum();
            assert!(l1 < 1e-11, "domain {d}: |pi P - pi|_1 = {l1:e}");
        }
    }
}

#[test]
fn true_model_normalizes() {
    let cfg = order3();
    let ds = Dataset::open(&cfg).unwrap();
    let src = ds.synthetic().unwrap();
    let (x, _) = batch(&ds, Some((0, 0)), 0, 1, 8);
    let vocab = cfg.model.vocab_size as u32;
    for t in 0..=5 {
        let ctx = &x[..t];
        let total: f64 = (0..vocab).map(|c| src.log_prob(ctx, c).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12, "context of {t} tokens: probabilities sum to {total}");
    }
}

/// Mean over windows of the per-window mean of -ln P_true(y_t | x_0..x_t),
/// and the standard error of that mean.
fn monte_carlo_loss(ds: &Dataset, windows: usize, seq: usize) -> (f64, f64) {
    let src = ds.synthetic().unwrap();
    let rows = 50;
    let mut means = Vec::with_capacity(windows);
    for step in 0..(windows / rows) as u64 {
        let (x, y) = batch(ds, Some((step, 0)), 0, rows, seq);
        for r in 0..rows {
            let row = &x[r * seq..(r + 1) * seq];
            let nll: f64 = (0..seq).map(|t| -src.log_prob(&row[..=t], y[r * seq + t])).sum();
            means.push(nll / seq as f64);
        }
    }
    let n = means.len() as f64;
    let mean = means.iter().sum::<f64>() / n;
    let var = means.iter().map(|m| (m - mean) * (m - mean)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

#[test]
fn monte_carlo_loss_matches_the_floor() {
    // Windows are i.i.d., so the sample mean of the window losses is within
    // 4 standard errors of its expectation (the floor) with probability
    // > 0.9999. The standard error is measured from the same samples and
    // must itself be small, or the check would prove nothing: the default
    // floor sits 0.0165 nats above the entropy rate, and the order-3 floor at
    // seq 4 sits 0.43 nats above its rate (a wrong H_1 would move it 0.08).
    let mut order3_short = order3();
    order3_short.train.seq_len = 4;
    for (cfg, windows) in [(tiny(), 4000), (order3_short, 20000)] {
        let seq = cfg.train.seq_len;
        let ds = Dataset::open(&cfg).unwrap();
        let floor = ds.info().loss_floor.unwrap();
        let (mean, se) = monte_carlo_loss(&ds, windows, seq);
        println!("seq {seq}: Monte-Carlo {mean:.5} +- {se:.5}, floor {floor:.5}");
        assert!(se < 0.005, "standard error {se} too large to test anything");
        assert!((mean - floor).abs() < 4.0 * se, "Monte-Carlo loss {mean} vs floor {floor} (se {se})");
    }
}

#[test]
fn entropies_are_ordered() {
    let mut configs = vec![tiny(), order3()];
    for (order, branching, teleport) in [(1, 3, 0.02), (2, 1, 0.1), (3, 5, 0.0), (2, 32, 0.5)] {
        let mut c = tiny();
        c.data.synthetic.order = order;
        c.data.synthetic.branching = branching;
        c.data.synthetic.teleport = teleport;
        c.data.synthetic.pool = 0;
        configs.push(c);
    }
    for cfg in configs {
        let s = &cfg.data.synthetic;
        let info = Dataset::open(&cfg).unwrap().info().clone();
        let (floor, rate) = (info.loss_floor.unwrap(), info.entropy_rate.unwrap());
        let (bigram, unigram) = (info.bigram_entropy.unwrap(), info.unigram_entropy.unwrap());
        let max = ((s.domains * s.domain_vocab) as f64).ln();
        let eps = 1e-9;
        assert!(rate > 0.0, "{}: rate {rate}", info.description);
        assert!(rate <= bigram + eps, "{}: rate {rate} > bigram {bigram}", info.description);
        assert!(bigram <= unigram + eps, "{}: bigram {bigram} > unigram {unigram}", info.description);
        assert!(unigram <= max + eps, "{}: unigram {unigram} > ln V {max}", info.description);
        assert!(floor >= rate - eps, "{}: floor {floor} < rate {rate}", info.description);
        if s.order == 1 {
            assert!((bigram - rate).abs() < 1e-9, "order 1: bigram {bigram} != rate {rate}");
            assert!((floor - rate).abs() < 1e-12, "order 1: floor {floor} != rate {rate}");
        }
    }
}

#[test]
fn default_corpus_numbers() {
    let t = std::time::Instant::now();
    let ds = Dataset::open(&tiny()).unwrap();
    let built = t.elapsed();
    let info = ds.info();
    println!("{info:#?}\nbuilt in {built:?}");
    assert_eq!(
        info.description,
        "synthetic: 8 domains x 32 tokens, order-2 Markov, branching 3, pool 6, teleport 0.02, seed 7"
    );
    assert_eq!((info.train_tokens, info.val_tokens), (None, None));
    // The numbers quoted in the README; a change to the generator must update both.
    let pinned = [
        ("loss_floor", info.loss_floor, 0.9876577442469057),
        ("entropy_rate", info.entropy_rate, 0.9772175969398622),
        ("bigram_entropy", info.bigram_entropy, 1.6453870245906108),
        ("unigram_entropy", info.unigram_entropy, 5.395679297144792),
    ];
    for (name, got, want) in pinned {
        let got = got.unwrap();
        assert!((got - want).abs() < 1e-9 * want, "{name} = {got}, README says {want}");
    }
    let src = ds.synthetic().unwrap();
    // With order 2 the first prediction conditions on one token: H_0 is the bigram entropy.
    assert!((src.conditional_entropy(0) - src.bigram_entropy()).abs() < 1e-9);
    let floor = (src.conditional_entropy(0) + 63.0 * src.entropy_rate()) / 64.0;
    assert!((floor - info.loss_floor.unwrap()).abs() < 1e-12);
}

#[test]
fn batches_are_deterministic() {
    let cfg = tiny();
    let (a, b) = (Dataset::open(&cfg).unwrap(), Dataset::open(&cfg).unwrap());
    let first = batch(&a, Some((5, 1)), 0, 4, 32);
    assert_eq!(first, batch(&b, Some((5, 1)), 0, 4, 32), "same (seed, step, micro) must repeat");
    assert_ne!(first.0, batch(&a, Some((6, 1)), 0, 4, 32).0, "another step must differ");
    assert_ne!(first.0, batch(&a, Some((5, 0)), 0, 4, 32).0, "another micro must differ");
    let mut reseeded = cfg.clone();
    reseeded.train.seed += 1;
    let c = Dataset::open(&reseeded).unwrap();
    assert_ne!(first.0, batch(&c, Some((5, 1)), 0, 4, 32).0, "another seed must differ");
    // Rows of one batch are not copies of each other.
    assert_ne!(first.0[..32], first.0[32..64]);
    assert_eq!(batch(&a, None, 3, 4, 32), batch(&b, None, 3, 4, 32), "validation must repeat");
    assert_ne!(batch(&a, None, 3, 4, 32).0, batch(&a, None, 4, 4, 32).0);
}

#[test]
fn train_and_val_streams_differ() {
    let ds = Dataset::open(&tiny()).unwrap();
    for i in 0..4u64 {
        let (tx, _) = batch(&ds, Some((i, 0)), 0, 8, 64);
        for j in 0..4u64 {
            let (vx, _) = batch(&ds, None, j, 8, 64);
            for r in 0..8 {
                for q in 0..8 {
                    assert_ne!(tx[r * 64..(r + 1) * 64], vx[q * 64..(q + 1) * 64], "train {i}/{r} == val {j}/{q}");
                }
            }
        }
    }
}

#[test]
fn sequences_stay_in_their_domain_and_shift_by_one() {
    for cfg in [tiny(), order3()] {
        let ds = Dataset::open(&cfg).unwrap();
        let m = cfg.data.synthetic.domain_vocab as u32;
        let (b, t) = (32, 40);
        let mut seen = vec![false; cfg.data.synthetic.domains];
        for (x, y) in [batch(&ds, Some((0, 0)), 0, b, t), batch(&ds, None, 0, b, t)] {
            for r in 0..b {
                let d = ds.domain_of(x[r * t]).expect("first token in a domain");
                seen[d] = true;
                let range = d as u32 * m..(d as u32 + 1) * m;
                let row = r * t..(r + 1) * t;
                assert!(
                    x[row.clone()].iter().chain(&y[row.clone()]).all(|v| range.contains(v)),
                    "row {r} leaves domain {d}"
                );
                assert_eq!(x[r * t + 1..(r + 1) * t], y[r * t..(r + 1) * t - 1], "y is not x shifted by one");
            }
        }
        assert!(seen.iter().all(|&s| s), "64 rows should visit every domain: {seen:?}");
    }
}

#[test]
fn short_sequences_are_state_prefixes() {
    // seq + 1 < order: a window is a prefix of the first state, and still has a floor.
    let mut cfg = order3();
    cfg.train.seq_len = 1;
    let ds = Dataset::open(&cfg).unwrap();
    let src = ds.synthetic().unwrap();
    assert!((ds.info().loss_floor.unwrap() - src.conditional_entropy(0)).abs() < 1e-15);
    let (x, y) = batch(&ds, Some((0, 0)), 0, 16, 1);
    assert!(x.iter().zip(&y).all(|(&a, &b)| src.domain_of(a) == src.domain_of(b)));
}

#[test]
fn bad_synthetic_configs_are_errors() {
    let mut c = tiny();
    c.model.vocab_size = 200;
    assert_mentions(&data_err(Dataset::open(&c)), &["model.vocab_size", "256"]);
    let mut c = tiny();
    c.data.synthetic.branching = 33;
    assert!(matches!(Dataset::open(&c), Err(Error::Config(_))));
    let mut c = tiny();
    c.data.synthetic.order = 0;
    assert!(matches!(Dataset::open(&c), Err(Error::Config(_))));
    let mut c = tiny();
    c.data.synthetic.order = 9;
    assert!(matches!(Dataset::open(&c), Err(Error::Config(_))));
    let mut c = tiny();
    c.train.seq_len = 0;
    assert!(matches!(Dataset::open(&c), Err(Error::Config(_))));
}

// ---------------------------------------------------------------- files

#[test]
fn text_file_with_byte_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.txt");
    let text: Vec<u8> = (0..1000u32).map(|i| b'a' + ((i * 7 + i / 13) % 26) as u8).collect();
    write(&path, &text);
    let ds = Dataset::open(&file_cfg(&path, 16)).unwrap();
    let info = ds.info();
    // val = ceil(0.1 * 1000) = 100 tokens, the tail.
    assert_eq!((info.train_tokens, info.val_tokens), (Some(900), Some(100)));
    assert!(info.description.contains("corpus.txt"), "{}", info.description);
    assert_eq!((info.loss_floor, info.entropy_rate, info.bigram_entropy), (None, None, None));
    let mut counts = [0f64; 256];
    text[..900].iter().for_each(|&b| counts[b as usize] += 1.0);
    let h: f64 = counts.iter().filter(|&&c| c > 0.0).map(|&c| -(c / 900.0) * (c / 900.0).ln()).sum();
    assert!((info.unigram_entropy.unwrap() - h).abs() < 1e-12);

    let (b, t) = (8, 16);
    let train: Vec<u32> = text[..900].iter().map(|&c| u32::from(c)).collect();
    let (x, y) = batch(&ds, Some((3, 0)), 0, b, t);
    for r in 0..b {
        let xs = &x[r * t..(r + 1) * t];
        let start =
            (0..=900 - t - 1).find(|&s| train[s..s + t] == *xs && train[s + 1..s + t + 1] == y[r * t..(r + 1) * t]);
        assert!(start.is_some(), "row {r} is not a window of the training split");
    }
    assert_eq!(batch(&ds, Some((3, 0)), 0, b, t), (x.clone(), y), "train batches must repeat");
    assert_ne!(batch(&ds, Some((4, 0)), 0, b, t).0, x);

    // Validation: windows w = index*batch + row start at 900 + w*16, modulo (100-1)/16 = 6 windows.
    let (vx, vy) = batch(&ds, None, 1, 4, t);
    for r in 0..4 {
        let start = 900 + ((4 + r) % 6) * t;
        let want: Vec<u32> = text[start..start + t + 1].iter().map(|&c| u32::from(c)).collect();
        assert_eq!(vx[r * t..(r + 1) * t], want[..t], "val row {r}");
        assert_eq!(vy[r * t..(r + 1) * t], want[1..], "val row {r}");
    }
    assert_eq!(ds.tokenizer().decode(&vx[..t]), String::from_utf8_lossy(&text[964..980]));
}

#[test]
fn directory_is_sorted_concatenated_and_skips_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(&root.join("b/c.txt"), b"def\n");
    write(&root.join("a.txt"), b"abc");
    write(&root.join("d.txt"), b"ghi");
    write(&root.join("empty.txt"), b"");
    write(&root.join(".hidden.txt"), b"HIDDEN");
    write(&root.join(".git/config"), b"HIDDEN");
    let mut cfg = file_cfg(root, 2);
    cfg.data.val_fraction = 0.5;
    let ds = Dataset::open(&cfg).unwrap();
    // Stream: "abc" + '\n' (a.txt has no final newline) + "def\n" + "ghi" = 11 tokens.
    assert_eq!((ds.info().train_tokens, ds.info().val_tokens), (Some(5), Some(6)));
    assert!(ds.info().description.contains("3 files"), "{}", ds.info().description);
    let tok = ds.tokenizer();
    // Val split "ef\nghi": (6-1)/2 = 2 windows, at 0 and 2.
    let (x, y) = batch(&ds, None, 0, 3, 2);
    assert_eq!(tok.decode(&x), "ef\ngef");
    assert_eq!(tok.decode(&y), "f\nghf\n");
    let (x, _) = batch(&ds, Some((0, 0)), 0, 64, 2);
    assert!(x.chunks(2).all(|w| ["ab", "bc", "c\n", "\nd"].contains(&tok.decode(w).as_str())));
}

#[test]
fn u16_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.u16");
    let ids: Vec<u16> = (0..400u16).map(|i| (i * 37) % 250).collect();
    write(&path, &ids.iter().flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>());
    let mut cfg = file_cfg(&path, 8);
    cfg.data.val_fraction = 0.25;
    let ds = Dataset::open(&cfg).unwrap();
    assert_eq!((ds.info().train_tokens, ds.info().val_tokens), (Some(300), Some(100)));
    let (x, y) = batch(&ds, None, 0, 2, 8);
    let want: Vec<u32> = ids[300..317].iter().map(|&i| u32::from(i)).collect();
    assert_eq!(x, [&want[..8], &want[8..16]].concat());
    assert_eq!(y, [&want[1..9], &want[9..17]].concat());
}

#[test]
fn hf_tokenizer_round_trip_and_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let spec = hf_tokenizer(dir.path(), 0);
    let tok = Tokenizer::from_spec(&spec).unwrap();
    assert_eq!(tok.vocab_size(), 3);
    assert_eq!(tok.encode("hello world hello zzz").unwrap(), [1, 2, 1, 0]);
    assert_eq!(tok.decode(&[1, 2]), "hello world");
    let corpus = dir.path().join("words.txt");
    write(&corpus, "hello world ".repeat(50).as_bytes());
    let mut cfg = file_cfg(&corpus, 4);
    cfg.data.tokenizer = spec;
    let ds = Dataset::open(&cfg).unwrap();
    assert_eq!((ds.info().train_tokens, ds.info().val_tokens), (Some(90), Some(10)));
    // Two equally frequent words: ln 2.
    assert!((ds.info().unigram_entropy.unwrap() - 2f64.ln()).abs() < 1e-12);
    let (x, _) = batch(&ds, Some((0, 0)), 0, 4, 4);
    assert!(x.iter().all(|&i| i == 1 || i == 2));
}

#[test]
fn byte_tokenizer() {
    let tok = Tokenizer::from_spec("byte").unwrap();
    assert_eq!(tok.vocab_size(), 256);
    assert_eq!(tok.encode("hé").unwrap(), [104, 195, 169]);
    assert_eq!(tok.encode_bytes(&[0xff, 0], "x").unwrap(), [255, 0]);
    assert_eq!(tok.decode(&[104, 195, 169]), "hé");
    assert_eq!(tok.decode(&[104, 0xff, 300]), "h\u{fffd}\u{fffd}");
}

// ---------------------------------------------------------------- bad input

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.txt");
    let msg = data_err(Dataset::open(&file_cfg(&path, 8)));
    assert_mentions(&msg, &["nope.txt", "synthetic"]);
}

#[test]
fn empty_file() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["empty.txt", "empty.u16"] {
        let path = dir.path().join(name);
        write(&path, b"");
        assert_mentions(&data_err(Dataset::open(&file_cfg(&path, 8))), &[name, "empty"]);
    }
}

#[test]
fn file_too_short_for_a_window() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.txt");
    // Both splits too short: 100 tokens for seq 128.
    write(&path, &[b'x'; 100]);
    let msg = data_err(Dataset::open(&file_cfg(&path, 128)));
    assert_mentions(&msg, &["short.txt", "100 tokens", "129", "train.seq_len"]);
    // Only validation too short: 200 tokens leave 20 for validation.
    write(&path, &[b'x'; 200]);
    let msg = data_err(Dataset::open(&file_cfg(&path, 128)));
    assert_mentions(&msg, &["200 tokens", "180 train", "20 validation", "129", "1281"]);
    // Exactly enough opens.
    write(&path, &[b'x'; 1281]);
    Dataset::open(&file_cfg(&path, 128)).unwrap();
}

#[test]
fn directory_without_usable_files() {
    let dir = tempfile::tempdir().unwrap();
    let msg = data_err(Dataset::open(&file_cfg(dir.path(), 8)));
    assert_mentions(&msg, &[&dir.path().display().to_string(), "no usable files"]);
    write(&dir.path().join(".hidden"), b"text");
    write(&dir.path().join("sub/empty.txt"), b"");
    let msg = data_err(Dataset::open(&file_cfg(dir.path(), 8)));
    assert_mentions(&msg, &["no usable files", "1 non-hidden"]);
}

#[test]
fn directory_with_a_token_file() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("a.txt"), &[b'x'; 400]);
    write(&dir.path().join("b.u16"), &[0; 400]);
    assert_mentions(&data_err(Dataset::open(&file_cfg(dir.path(), 8))), &["b.u16", "data.source"]);
}

#[test]
fn non_utf8_with_hf_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.txt");
    let mut bytes = b"hello world ".repeat(40);
    bytes[17] = 0xe9;
    write(&path, &bytes);
    let mut cfg = file_cfg(&path, 8);
    cfg.data.tokenizer = hf_tokenizer(dir.path(), 0);
    let msg = data_err(Dataset::open(&cfg));
    assert_mentions(&msg, &["latin1.txt", "UTF-8", "offset 17", "\"byte\"", "convert"]);
    // The byte tokenizer takes the same file.
    Dataset::open(&file_cfg(&path, 8)).unwrap();
}

#[test]
fn u16_file_with_odd_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.u16");
    write(&path, &[1u8; 401]);
    assert_mentions(&data_err(Dataset::open(&file_cfg(&path, 8))), &["odd.u16", "401 bytes", "odd"]);
}

#[test]
fn token_id_beyond_vocab() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.u16");
    let mut ids = vec![5u16; 400];
    ids[123] = 300;
    write(&path, &ids.iter().flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>());
    let msg = data_err(Dataset::open(&file_cfg(&path, 8)));
    assert_mentions(&msg, &["big.u16", "token id 300", "model.vocab_size = 256", "at least 301"]);
    // A byte corpus against a small vocabulary.
    let path = dir.path().join("ascii.txt");
    write(&path, &b"abcz".repeat(100));
    let mut cfg = file_cfg(&path, 8);
    cfg.model.vocab_size = 120;
    assert_mentions(&data_err(Dataset::open(&cfg)), &["ascii.txt", "token id 122", "model.vocab_size"]);
    // And in a directory, naming the file.
    let sub = dir.path().join("d");
    write(&sub.join("ok.txt"), &b"abc".repeat(100));
    write(&sub.join("zz.txt"), &b"zzz".repeat(100));
    let mut cfg = file_cfg(&sub, 8);
    cfg.model.vocab_size = 120;
    assert_mentions(&data_err(Dataset::open(&cfg)), &["zz.txt", "token id 122"]);
}

#[test]
fn missing_or_broken_tokenizer_json() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    write(&corpus, &b"hello world ".repeat(50));
    let mut cfg = file_cfg(&corpus, 4);
    cfg.data.tokenizer = dir.path().join("absent.json").display().to_string();
    assert_mentions(&data_err(Dataset::open(&cfg)), &["absent.json", "does not exist", "\"byte\""]);
    let broken = dir.path().join("broken.json");
    write(&broken, b"{\"model\": 42");
    cfg.data.tokenizer = broken.display().to_string();
    assert_mentions(&data_err(Dataset::open(&cfg)), &["broken.json", "cannot parse"]);
    assert!(matches!(Tokenizer::from_spec("/nonexistent/tokenizer.json"), Err(Error::Data(_))));
}

#[test]
fn hf_vocab_larger_than_model() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    write(&corpus, &b"hello world ".repeat(50));
    let mut cfg = file_cfg(&corpus, 4);
    cfg.data.tokenizer = hf_tokenizer(dir.path(), 297);
    let msg = data_err(Dataset::open(&cfg));
    assert_mentions(&msg, &["tokenizer297.json", "300", "model.vocab_size = 256"]);
    cfg.model.vocab_size = 300;
    Dataset::open(&cfg).unwrap();
}

#[test]
fn bad_val_fraction_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.txt");
    write(&path, &[b'x'; 1000]);
    for f in [0.0, 1.0, -0.5, f64::NAN] {
        let mut cfg = file_cfg(&path, 8);
        cfg.data.val_fraction = f;
        assert!(matches!(Dataset::open(&cfg), Err(Error::Config(_))), "val_fraction {f}");
    }
}

#[test]
fn pools_bound_the_successors_of_each_last_token() {
    let cfg = tiny();
    let s = &cfg.data.synthetic;
    let src = SyntheticSource::new(s).unwrap();
    let m = s.domain_vocab;
    let floor = s.teleport / m as f64 + 1e-12;
    for d in 0..s.domains {
        for last in 0..m {
            // States are base-m numbers with the last token least significant.
            let mut seen = vec![false; m];
            for s_idx in (last..src.num_states()).step_by(m) {
                for (c, p) in src.next_distribution(d, s_idx).iter().enumerate() {
                    if *p > floor {
                        seen[c] = true;
                    }
                }
            }
            let n = seen.iter().filter(|&&x| x).count();
            assert!(n <= s.pool && n >= s.branching, "domain {d}, last token {last}: {n} successors, pool {}", s.pool);
        }
    }
    // The bigram is informative: well below the within-domain uniform ln m.
    assert!(src.bigram_entropy() < (m as f64).ln() - 1.0);
}
