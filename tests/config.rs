//! Config parsing and validation: every bad value names the key and a fix;
//! the commented TOML printed by `switchyard config` parses back unchanged.

use switchyard::config::{capacity, PRESETS};
use switchyard::{Config, Error};

fn config_err(r: switchyard::Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(e @ Error::Config(_)) => e.to_string(),
        other => panic!("expected a config error, got {other:?}"),
    }
}

fn with(sets: &[&str]) -> switchyard::Result<Config> {
    let c = Config::preset("tiny")?.apply_overrides(&sets.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    c.validate()?;
    Ok(c)
}

#[test]
fn presets_validate_and_round_trip_through_commented_toml() {
    for p in PRESETS {
        let c = Config::preset(p).unwrap();
        c.validate().unwrap();
        let text = c.to_commented_toml();
        assert!(text.contains("# experts per token"), "comments missing");
        assert_eq!(Config::from_toml_str(&text, p).unwrap(), c);
    }
    let msg = config_err(Config::preset("huge"));
    assert!(msg.contains("tiny, small, switch-base"), "{msg}");
}

#[test]
fn d_model_not_divisible_by_heads() {
    let msg = config_err(with(&["model.d_model=100", "model.n_head=3"]));
    assert!(
        msg.contains("model.d_model = 100 is not divisible by model.n_head = 3") && msg.contains("e.g. 2"),
        "{msg}"
    );
}

#[test]
fn top_k_larger_than_experts() {
    let msg = config_err(with(&["model.top_k=9"]));
    assert!(msg.contains("model.top_k = 9 must be between 1 and model.n_experts = 8"), "{msg}");
}

#[test]
fn nan_capacity_factor_from_toml() {
    let mut text = Config::preset("tiny").unwrap().to_commented_toml();
    text = text.replace("capacity_factor = 1.25", "capacity_factor = nan");
    let c = Config::from_toml_str(&text, "nan.toml").unwrap();
    let msg = config_err(c.validate());
    assert!(msg.contains("model.capacity_factor = NaN is not a finite number"), "{msg}");
}

#[test]
fn unknown_keys_and_wrong_types_name_the_key() {
    let text = Config::preset("tiny").unwrap().to_commented_toml().replace("top_k = 1", "top_k = 1\nn_expertz = 4");
    let msg = config_err(Config::from_toml_str(&text, "typo.toml"));
    assert!(msg.contains("typo.toml") && msg.contains("n_expertz"), "{msg}");
    let text = Config::preset("tiny").unwrap().to_commented_toml().replace("n_layer = 4", "n_layer = \"four\"");
    let msg = config_err(Config::from_toml_str(&text, "type.toml"));
    assert!(msg.contains("n_layer") && msg.contains("invalid type"), "{msg}");
    let msg = config_err(with(&["model.n_expertz=4"]));
    assert!(msg.contains("unknown key `n_expertz`") && msg.contains("n_experts"), "{msg}");
    let msg = config_err(with(&["model.n_experts=many"]));
    assert!(msg.contains("n_experts"), "{msg}");
    let msg = config_err(with(&["model"]));
    assert!(msg.contains("section.key=value"), "{msg}");
    let msg = config_err(with(&["model=3"]));
    assert!(msg.contains("is a section"), "{msg}");
}

#[test]
fn overrides_apply_and_integers_widen_to_floats() {
    let c =
        with(&["model.n_experts=16", "model.capacity_factor=2", "data.synthetic.order=3", "train.lr=1e-3"]).unwrap();
    assert_eq!(c.model.n_experts, 16);
    assert_eq!(c.model.capacity_factor, 2.0);
    assert_eq!(c.data.synthetic.order, 3);
    assert_eq!(c.train.lr, 1e-3);
}

#[test]
fn value_checks() {
    for (set, want) in [
        (vec!["train.seq_len=256"], "exceeds model.max_seq_len"),
        (vec!["model.router_jitter=1.5"], "router_jitter"),
        (vec!["train.min_lr=1"], "min_lr"),
        (vec!["model.moe_every=9"], "no layer would be MoE"),
        (vec!["data.synthetic.domain_vocab=64"], "more than model.vocab_size"),
        (vec!["train.batch_size=0"], "train.batch_size = 0"),
        (vec!["train.beta2=1.0"], "train.beta2"),
        (vec!["model.aux_loss_coef=-1"], "negative"),
        (vec!["data.synthetic.pool=2"], "data.synthetic.pool = 2"),
    ] {
        let msg = config_err(with(&set.iter().map(|s| &**s).collect::<Vec<_>>()));
        assert!(msg.contains(want), "{set:?}: {msg}");
    }
}

#[test]
fn capacity_formula() {
    // C = ceil(cf * k * N / E); cf <= 0 is dropless (C = N).
    assert_eq!(capacity(1.25, 1, 2048, 8), 320);
    assert_eq!(capacity(1.0, 2, 10, 3), 7);
    assert_eq!(capacity(0.0, 2, 10, 3), 10);
    assert_eq!(capacity(-1.0, 1, 10, 3), 10);
}

#[test]
fn capacity_that_rounds_to_zero_is_refused_with_the_fix() {
    // C = ceil(cf * k * N / E) is at least 1 for any cf whose product does not
    // underflow; the smallest subnormal factor over 1024 experts and one token does.
    let msg = config_err(with(&[
        "model.n_experts=1024",
        "model.capacity_factor=5e-324",
        "train.batch_size=1",
        "train.seq_len=1",
    ]));
    assert!(
        msg.contains("model.capacity_factor") && msg.contains("capacity of 0 tokens") && msg.contains("dropless"),
        "{msg}"
    );
}
