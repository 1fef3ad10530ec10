//! Script mode: one record read from standard input, run.

use super::super::lineformat::{self, Line, Record, ScriptAction};
use super::super::{DeviceClient, DeviceError};
use super::output::Output;

/// Runs one script line; true means sign out. Err: a write to the
/// service failed.
pub(super) fn script_line(
    client: &mut DeviceClient,
    line: &str,
    line_no: u64,
    out: &mut Output,
) -> Result<bool, DeviceError> {
    let action =
        Record::parse(line).and_then(|r| r.map(|r| lineformat::parse_action(&r)).transpose());
    let action = match action {
        Ok(Some(a)) => a,
        Ok(None) => return Ok(false),
        Err(why) => {
            out.record(
                Line::new("error")
                    .kv("line", &line_no.to_string())
                    .kv("text", &why)
                    .done(),
            );
            return Ok(false);
        }
    };
    let sent = match action {
        ScriptAction::Logout => return Ok(true),
        ScriptAction::Status(c) => client
            .send_status(c)
            .map(|_| Line::new("sent status").kv("coverage", c.name()).done()),
        ScriptAction::Ack(seq) => client
            .ack(seq)
            .map(|_| Line::new("acked").kv("seq", &seq.to_string()).done()),
        ScriptAction::Command(c) => {
            let name = c.name();
            client.send_command(c).map(|id| {
                Line::new("sent")
                    .kv("id", &id.to_string())
                    .kv("cmd", name)
                    .done()
            })
        }
    };
    match sent {
        Ok(rec) => {
            out.record(rec);
            Ok(false)
        }
        Err(e) => Err(e),
    }
}
