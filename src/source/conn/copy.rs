//! The COPY sub-protocols of a [`Connection`]: CopyBoth, which carries the
//! replication stream, and COPY OUT, which carries the initial copy's rows.

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::{db_error, Connection};
use crate::source::error::SourceError;

impl Connection {
    /// Sends `sql` (START_REPLICATION) and waits for the CopyBoth response.
    pub(crate) async fn start_copy_both(&mut self, sql: &str) -> Result<(), SourceError> {
        frontend::query(sql, &mut self.write_buf).map_err(|e| self.protocol(e.to_string()))?;
        self.flush().await?;
        loop {
            match self.read_message().await? {
                // CopyBothResponse, see try_parse.
                Message::CopyOutResponse(_) => return Ok(()),
                Message::NoticeResponse(_) | Message::ParameterStatus(_) => {}
                Message::ErrorResponse(body) => {
                    let error = db_error(&body);
                    // Drain to ReadyForQuery so the connection stays usable.
                    loop {
                        if let Message::ReadyForQuery(_) = self.read_message().await? {
                            break;
                        }
                    }
                    return Err(SourceError::Db {
                        target: self.target.clone(),
                        error: Box::new(error),
                    });
                }
                _ => return Err(self.protocol("unexpected answer to START_REPLICATION".into())),
            }
        }
    }

    /// Queues one CopyData message (sent at the next flush).
    pub(crate) fn queue_copy_data(&mut self, data: Bytes) -> Result<(), SourceError> {
        let msg = frontend::CopyData::new(data).map_err(|e| self.protocol(e.to_string()))?;
        msg.write(&mut self.write_buf);
        Ok(())
    }

    /// Ends our side of the CopyBoth stream and drains the server's side.
    pub(crate) async fn finish_copy(&mut self) -> Result<(), SourceError> {
        frontend::copy_done(&mut self.write_buf);
        self.flush().await?;
        loop {
            match self.read_message().await? {
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(body) => {
                    return Err(SourceError::Db {
                        target: self.target.clone(),
                        error: Box::new(db_error(&body)),
                    })
                }
                _ => {}
            }
        }
    }

    /// Sends `sql` (a `COPY ... TO STDOUT`) and waits for the
    /// CopyOutResponse; the rows then come from [`Connection::read_copy_out`].
    pub async fn start_copy_out(&mut self, sql: &str) -> Result<(), SourceError> {
        frontend::query(sql, &mut self.write_buf).map_err(|e| self.protocol(e.to_string()))?;
        self.flush().await?;
        // Anything but a CopyOutResponse is drained up to ReadyForQuery, so
        // the connection stays usable after the error.
        let mut error = None;
        loop {
            match self.read_message().await? {
                Message::CopyOutResponse(_) if error.is_none() => return Ok(()),
                Message::ErrorResponse(body) => error = Some(db_error(&body)),
                Message::ReadyForQuery(_) => {
                    return Err(match error {
                        Some(error) => SourceError::Db {
                            target: self.target.clone(),
                            error: Box::new(error),
                        },
                        None => self.protocol(format!("{sql:?} is not a COPY TO STDOUT")),
                    })
                }
                Message::CopyInResponse(_) => {
                    frontend::copy_fail("pgbridge expected COPY TO STDOUT", &mut self.write_buf)
                        .map_err(|e| self.protocol(e.to_string()))?;
                    self.flush().await?;
                }
                _ => {}
            }
        }
    }

    /// Appends the payloads of the buffered-or-arriving CopyData messages of
    /// a running COPY OUT (one per row) to `out`, whole, while they fit in
    /// `max` bytes; a row larger than `max` comes alone. Returns true when
    /// `out` is full (the next row would not fit, or `max` is reached),
    /// false once the COPY is over (the server's CopyDone, CommandComplete
    /// and ReadyForQuery are consumed; `out` may still hold the last rows).
    /// So what the caller sends on in one message is never larger than
    /// `max` or one source row, which keeps it below the server's message
    /// limit (1 GB) for any row the source could send. The frames are
    /// scanned in place: no per-row message, allocation or copy beyond the
    /// one into `out`.
    pub async fn read_copy_out(
        &mut self,
        out: &mut BytesMut,
        max: usize,
    ) -> Result<bool, SourceError> {
        loop {
            // Every complete frame in the buffer.
            loop {
                let buf = &self.read_buf[..];
                if buf.len() < 5 {
                    break;
                }
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if len < 4 {
                    return Err(self.protocol(format!("message length {len} in COPY OUT")));
                }
                if buf[0] == b'd' && !out.is_empty() && out.len() + (len - 4) > max {
                    return Ok(true);
                }
                if buf.len() < 1 + len {
                    // Room for the rest of the frame (reserve counts from len()).
                    let have = buf.len();
                    self.read_buf.reserve(1 + len - have);
                    break;
                }
                match buf[0] {
                    b'd' => {
                        out.extend_from_slice(&buf[5..1 + len]);
                        // Advancing the cursor: no split-off handle to make and drop per row.
                        self.read_buf.advance(1 + len);
                        if out.len() >= max {
                            return Ok(true);
                        }
                    }
                    b'c' => {
                        self.read_buf.advance(1 + len);
                        self.finish_copy_out().await?;
                        return Ok(false);
                    }
                    // Errors, notices, parameter changes: the general path.
                    _ => match self.read_message().await? {
                        Message::ErrorResponse(body) => {
                            let error = db_error(&body);
                            loop {
                                if let Message::ReadyForQuery(_) = self.read_message().await? {
                                    break;
                                }
                            }
                            return Err(SourceError::Db {
                                target: self.target.clone(),
                                error: Box::new(error),
                            });
                        }
                        Message::NoticeResponse(_) | Message::ParameterStatus(_) => {}
                        _ => return Err(self.protocol("unexpected message in COPY OUT".into())),
                    },
                }
            }
            if self.read_buf.capacity() - self.read_buf.len() < 8 * 1024 {
                self.read_buf.reserve(64 * 1024);
            }
            self.read_more().await?;
        }
    }

    /// After the server's CopyDone: its CommandComplete and ReadyForQuery.
    async fn finish_copy_out(&mut self) -> Result<(), SourceError> {
        let mut error = None;
        loop {
            match self.read_message().await? {
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(body) => error = Some(db_error(&body)),
                _ => {}
            }
        }
        match error {
            Some(error) => Err(SourceError::Db {
                target: self.target.clone(),
                error: Box::new(error),
            }),
            None => Ok(()),
        }
    }
}
