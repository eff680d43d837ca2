//! An error with its causes on one line, for logs: the one place the cause chain is rendered.

/// `err` and each of its sources, `: `-separated. A cause whose text the message already ends
/// with (an error that prints its source itself) is not repeated.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(current) = cause {
        let said = current.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = current.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("binding proxy listener: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let err = Outer(std::io::Error::other("address in use"));
        assert_eq!(error_chain(&err), "binding proxy listener: address in use");
    }
}
