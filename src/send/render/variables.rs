//! What `Renderer::new` checks about the variables a template uses, and how template errors
//! name their template.

use minijinja::Environment;

use super::escape::URI_TEMPLATES;
use super::{BUILTIN_VARIABLES, RenderError};
use crate::campaign::TemplateSource;
use crate::send::source::Columns;

/// The campaign key of a template, by its name (see `campaign`).
pub(super) fn template_key(name: &str) -> &'static str {
    match name {
        "subject.txt" => "message.subject",
        "to_name.txt" => "message.to_name",
        "body.txt" => "message.text",
        "body.html" => "message.html",
        "unsubscribe_url.txt" => "unsubscribe.url",
        "unsubscribe_mailto.txt" => "unsubscribe.mailto",
        _ => "template",
    }
}

/// Every variable `src` uses must be a column or a built-in (else an error); an unsubscribe
/// target that uses a list column gets a warning: the value is percent-encoded, but a column
/// can hold anything, while a List-Unsubscribe target should carry only the token.
pub(super) fn check_variables(
    env: &Environment<'static>,
    src: &TemplateSource,
    columns: &Columns,
    errors: &mut Vec<RenderError>,
    warnings: &mut Vec<String>,
) {
    let tmpl = env.get_template(&src.name).expect("added before");
    let mut names: Vec<String> = tmpl.undeclared_variables(false).into_iter().collect();
    names.sort();
    for name in names {
        let line = src.first_line + line_of_variable(&src.text, &name).saturating_sub(1);
        let column = name != "email" && columns.index(&name).is_some();
        if !column && !BUILTIN_VARIABLES.contains(&name.as_str()) {
            errors.push(RenderError::UnknownVariable {
                file: src.file.clone(),
                line,
                name,
                columns: columns.names().join(", "),
                builtins: BUILTIN_VARIABLES.join(", "),
            });
        } else if column && URI_TEMPLATES.contains(&src.name.as_str()) {
            warnings.push(format!(
                "{}:{line}: {} uses {name:?}, a column of the recipient list: its values are percent-encoded, but a list column can hold anything; an unsubscribe target should carry only {{{{ unsubscribe_token }}}} (and the built-ins email, row, campaign)",
                src.file.display(),
                template_key(&src.name),
            ));
        }
    }
}

pub(super) fn template_error(src: &TemplateSource, e: &minijinja::Error) -> RenderError {
    let line = e.line().unwrap_or(1);
    RenderError::Template {
        file: src.file.clone(),
        line: src.first_line + line - 1,
        message: match e.detail() {
            Some(d) => format!("{}: {d}", e.kind()),
            None => e.kind().to_string(),
        },
    }
}

/// 1-based line of the first use of `name` inside a `{{ }}` or `{% %}` tag (1 if not found).
fn line_of_variable(text: &str, name: &str) -> usize {
    let mut offset = 0;
    while let Some(open) = text[offset..].find(['{']) {
        let start = offset + open;
        let rest = &text[start..];
        let end = rest.find(['}']).map_or(text.len(), |e| start + e);
        let tag = &text[start..end];
        if tag
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .any(|w| w == name)
        {
            return text[..start].matches('\n').count() + 1;
        }
        offset = start + 1;
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_lines() {
        let t = "Hello\n{% if plan %}\n{{ first_name | default('x') }}\n{% endif %}";
        assert_eq!(line_of_variable(t, "first_name"), 3);
        assert_eq!(line_of_variable(t, "plan"), 2);
        assert_eq!(line_of_variable(t, "nothere"), 1);
    }
}
