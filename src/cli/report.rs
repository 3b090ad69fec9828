//! How a failure is shown: one `error: ...` line on stderr.

/// The error and its causes on one line, `outer: cause: root`. A cause whose text the message
/// already holds is left out: OMS errors quote their I/O cause in their own message.
pub(crate) fn one_line(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    // Keep it to one line whatever a cause printed, so scripts can rely on the shape.
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use std::io;

    use omstream::oms::OmsError;

    use super::*;

    #[test]
    fn causes_are_joined_once() {
        let io = io::Error::new(io::ErrorKind::PermissionDenied, "denied");
        let oms = OmsError::io("open", std::path::Path::new("/x"), io);
        let err =
            anyhow::Error::new(oms).context("sending to q stopped after 3 messages were sent");
        assert_eq!(
            one_line(&err),
            "sending to q stopped after 3 messages were sent: [OMS 1501 Storage Service Error] cannot open /x: denied"
        );
        assert_eq!(one_line(&anyhow::anyhow!("two\nlines")), "two lines");
    }
}
