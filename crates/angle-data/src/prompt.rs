//! Prompts: templates with a `{text}` placeholder wrapped around texts before tokenisation.
//!
//! As in angle-emb: format A texts (both of a pair) take the text prompt; in formats B and C the query takes the
//! query prompt, positives and negatives the document prompt.

use crate::{DataError, Role};

const PLACEHOLDER: &str = "{text}";

/// angle-emb's named prompts (`angle_emb.Prompts`), usable by name (`A` or `Prompts.A`) wherever a template is.
pub const NAMED: [(&str, &str); 3] = [
    ("A", "Summarize sentence \"{text}\" in one word:\""),
    ("B", "You can only output one word. Summarize \"{text}\":\""),
    (
        "C",
        "Represent this sentence for searching relevant passages: {text}",
    ),
];

/// A template such as `"Represent this sentence for searching relevant passages: {text}"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt(String);

impl Prompt {
    /// A template, or the name of one of angle-emb's prompts ([`NAMED`]). Fails when the template has no
    /// `{text}`: a prompt without it would replace every text by the same string.
    pub fn new(template: impl Into<String>) -> Result<Self, DataError> {
        let template = template.into();
        let name = template.strip_prefix("Prompts.").unwrap_or(&template);
        if let Some((_, t)) = NAMED.iter().find(|(n, _)| *n == name) {
            return Ok(Prompt(t.to_string()));
        }
        if !template.contains(PLACEHOLDER) {
            return Err(DataError::Prompt { prompt: template });
        }
        Ok(Prompt(template))
    }

    /// Every `{text}` is replaced by the text (angle-emb uses `str.format(text=...)`, which does the same).
    pub fn apply(&self, text: &str) -> String {
        self.0.replace(PLACEHOLDER, text)
    }

    pub fn template(&self) -> &str {
        &self.0
    }
}

/// The prompts of a run; `None` leaves texts as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prompts {
    /// Format A: `text1` and `text2`.
    pub text: Option<Prompt>,
    /// Formats B/C: `query`.
    pub query: Option<Prompt>,
    /// Formats B/C: `positive` and `negative`.
    pub doc: Option<Prompt>,
}

impl Prompts {
    /// Builds from optional template strings, checking each for the placeholder.
    pub fn from_templates(
        text: Option<&str>,
        query: Option<&str>,
        doc: Option<&str>,
    ) -> Result<Self, DataError> {
        Ok(Prompts {
            text: text.map(Prompt::new).transpose()?,
            query: query.map(Prompt::new).transpose()?,
            doc: doc.map(Prompt::new).transpose()?,
        })
    }

    /// The prompt for a text role.
    pub fn for_role(&self, role: Role) -> Option<&Prompt> {
        match role {
            Role::Text | Role::Text1 | Role::Text2 => self.text.as_ref(),
            Role::Query => self.query.as_ref(),
            Role::Positive | Role::Negative => self.doc.as_ref(),
            Role::Label => None,
        }
    }

    /// The text as the encoder sees it.
    pub fn apply(&self, role: Role, text: &str) -> String {
        match self.for_role(role) {
            Some(p) => p.apply(text),
            None => text.to_string(),
        }
    }
}

#[cfg(test)]
mod named_tests {
    use super::*;

    #[test]
    fn angle_emb_prompts_by_name() {
        let a = Prompt::new("Prompts.A").unwrap();
        assert_eq!(a.apply("hi"), "Summarize sentence \"hi\" in one word:\"");
        assert_eq!(Prompt::new("C").unwrap().template(), NAMED[2].1);
        assert!(Prompt::new("D").is_err());
    }
}
