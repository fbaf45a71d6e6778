//! `tokenizer_config.json` and chat templates: prompts for chat models rendered from the
//! model's own Jinja `chat_template` the way transformers' `apply_chat_template(messages,
//! add_generation_prompt=True)` renders them (Jinja with `trim_blocks`, `lstrip_blocks` and
//! loop controls; the globals `raise_exception` and `strftime_now`; a `tojson` filter that
//! writes what Python's `json.dumps` writes; the special tokens as variables).

use std::path::Path;

use minijinja::{Environment, Error as JinjaError, ErrorKind as JinjaErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A special token in `tokenizer_config.json`: a string, or an added-token object.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum TokenField {
    Text(String),
    Added { content: String },
}

impl TokenField {
    fn text(self) -> String {
        match self {
            TokenField::Text(s) | TokenField::Added { content: s } => s,
        }
    }
}

/// One named template, as `chat_template` may list several.
#[derive(Clone, Debug, Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

/// `chat_template`: one template, or several by name (`default` is the one used).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum TemplateField {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Debug, Default, Deserialize)]
struct RawTokenizerConfig {
    add_bos_token: Option<bool>,
    add_eos_token: Option<bool>,
    bos_token: Option<TokenField>,
    eos_token: Option<TokenField>,
    pad_token: Option<TokenField>,
    unk_token: Option<TokenField>,
    chat_template: Option<TemplateField>,
}

/// The fields of `tokenizer_config.json` that decide chat prompts. `add_bos_token` and
/// `add_eos_token` are kept for callers but decide nothing: transformers 5 drops them when a
/// `tokenizer.json` is loaded, and so does vramswap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenizerConfig {
    /// `add_bos_token`, when the file sets it.
    pub add_bos_token: Option<bool>,
    /// `add_eos_token`, when the file sets it.
    pub add_eos_token: Option<bool>,
    /// The BOS token's text.
    pub bos_token: Option<String>,
    /// The EOS token's text.
    pub eos_token: Option<String>,
    /// The padding token's text.
    pub pad_token: Option<String>,
    /// The unknown token's text.
    pub unk_token: Option<String>,
    /// The chat template (from `chat_template.jinja` when the directory has one, as
    /// transformers 5 saves it, else from `tokenizer_config.json`).
    pub chat_template: Option<String>,
}

impl TokenizerConfig {
    /// Reads `tokenizer_config.json` and `chat_template.jinja` in `dir`; both are optional.
    pub fn from_dir(dir: &Path) -> Result<TokenizerConfig> {
        let path = dir.join("tokenizer_config.json");
        let raw: RawTokenizerConfig = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| Error::Malformed {
                path: path.clone(),
                problem: format!("not a tokenizer_config.json: {e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RawTokenizerConfig::default(),
            Err(source) => return Err(Error::Io { path, source }),
        };
        let jinja = dir.join("chat_template.jinja");
        let file_template = match std::fs::read_to_string(&jinja) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(Error::Io {
                    path: jinja,
                    source,
                })
            }
        };
        let chat_template = match (file_template, raw.chat_template) {
            (Some(t), _) => Some(t),
            (None, Some(TemplateField::One(t))) => Some(t),
            (None, Some(TemplateField::Named(list))) => list
                .into_iter()
                .find(|t| t.name == "default")
                .map(|t| t.template),
            (None, None) => None,
        };
        Ok(TokenizerConfig {
            add_bos_token: raw.add_bos_token,
            add_eos_token: raw.add_eos_token,
            bos_token: raw.bos_token.map(TokenField::text),
            eos_token: raw.eos_token.map(TokenField::text),
            pad_token: raw.pad_token.map(TokenField::text),
            unk_token: raw.unk_token.map(TokenField::text),
            chat_template,
        })
    }
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// Renders `template` for `messages` with `add_generation_prompt`, as transformers does. The
/// text it returns is tokenized without adding special tokens (the template writes them).
pub fn render_chat(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    config: &TokenizerConfig,
) -> Result<String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<Value, JinjaError> {
            Err(JinjaError::new(JinjaErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", |format: String| {
        strftime_now(&format).map_err(|m| JinjaError::new(JinjaErrorKind::InvalidOperation, m))
    });
    env.add_filter("tojson", tojson);
    let bad = |e: JinjaError| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg += &format!(": {s}");
            src = s.source();
        }
        Error::InvalidArgument(format!(
            "the model's chat template cannot be rendered: {msg}"
        ))
    };
    env.add_template("chat", template).map_err(bad)?;
    let ctx = minijinja::context! {
        messages => Value::from_serialize(messages),
        add_generation_prompt => add_generation_prompt,
        tools => Value::from(()),
        documents => Value::from(()),
        bos_token => config.bos_token.clone().unwrap_or_default(),
        eos_token => config.eos_token.clone().unwrap_or_default(),
        pad_token => config.pad_token.clone().unwrap_or_default(),
        unk_token => config.unk_token.clone().unwrap_or_default(),
    };
    env.get_template("chat")
        .and_then(|t| t.render(ctx))
        .map_err(bad)
}

/// Jinja's `tojson` as transformers defines it: Python's `json.dumps(x, ensure_ascii=False,
/// indent=indent)` (separators `", "` and `": "` on one line; newlines and indent with one).
fn tojson(value: Value, indent: Option<usize>) -> std::result::Result<Value, JinjaError> {
    use serde::Serialize as _;
    let mut out = Vec::new();
    let res = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let f = serde_json::ser::PrettyFormatter::with_indent(&pad);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, f))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out, PyCompact,
        )),
    };
    res.map_err(|e| JinjaError::new(JinjaErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(
        String::from_utf8(out).expect("serde_json writes UTF-8"),
    ))
}

/// serde_json's compact form with Python's default separators.
struct PyCompact;

impl serde_json::ser::Formatter for PyCompact {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// transformers' `strftime_now(format)`: the current local time as Python's `strftime` writes
/// it. Here in UTC, for the directives chat templates use (`%Y %y %m %d %e %H %M %S %B %b %A
/// %a %j %%`); another directive is an error naming it.
fn strftime_now(format: &str) -> std::result::Result<String, String> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs() as i64;
    strftime(format, secs)
}

/// `strftime` of the UTC time `secs` after the Unix epoch (see [`strftime_now`]).
fn strftime(format: &str, secs: i64) -> std::result::Result<String, String> {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][(month - 1) as usize];
    let yday = before + day + i64::from(leap && month > 2);
    let weekday = (days + 3).rem_euclid(7); // 1970-01-01 was a Thursday (Monday = 0).
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year % 100),
            Some('m') => out += &format!("{month:02}"),
            Some('d') => out += &format!("{day:02}"),
            Some('e') => out += &format!("{day:>2}"),
            Some('H') => out += &format!("{:02}", rem / 3600),
            Some('M') => out += &format!("{:02}", rem / 60 % 60),
            Some('S') => out += &format!("{:02}", rem % 60),
            Some('B') => out += MONTHS[(month - 1) as usize],
            Some('b') => out += &MONTHS[(month - 1) as usize][..3],
            Some('A') => out += DAYS[weekday as usize],
            Some('a') => out += &DAYS[weekday as usize][..3],
            Some('j') => out += &format!("{yday:03}"),
            Some('%') => out.push('%'),
            other => {
                return Err(format!(
                    "strftime_now: directive %{} is not implemented",
                    other.map(String::from).unwrap_or_default()
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Vec<ChatMessage> {
        vec![ChatMessage {
            role: "user".into(),
            content: text.into(),
        }]
    }

    #[test]
    fn a_chatml_template_renders_with_the_generation_prompt() {
        let t = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'].strip() + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let got = render_chat(t, &user(" hi "), true, &TokenizerConfig::default()).unwrap();
        assert_eq!(
            got,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_and_bad_templates_are_clear_errors() {
        let t = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('needs a system message') }}{% endif %}";
        let e = render_chat(t, &user("x"), true, &TokenizerConfig::default()).unwrap_err();
        assert!(e.to_string().contains("needs a system message"), "{e}");
        let e =
            render_chat("{% for %}", &user("x"), true, &TokenizerConfig::default()).unwrap_err();
        assert!(e.to_string().contains("chat template"), "{e}");
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let cfg = TokenizerConfig {
            bos_token: Some("<s>".into()),
            ..Default::default()
        };
        let got = render_chat(
            "{{ bos_token }}{{ messages | tojson }}",
            &user("é"),
            false,
            &cfg,
        )
        .unwrap();
        assert_eq!(got, r#"<s>[{"role": "user", "content": "é"}]"#);
    }

    #[test]
    fn strftime_formats_a_known_date() {
        // 2024-07-23 12:34:56 UTC, a Tuesday, day 205 of a leap year.
        let s = strftime("%d %b %Y, %A %B %j %H:%M:%S %%", 1_721_738_096).unwrap();
        assert_eq!(s, "23 Jul 2024, Tuesday July 205 12:34:56 %");
        assert!(strftime("%Q", 0).unwrap_err().contains("%Q"));
    }
}
