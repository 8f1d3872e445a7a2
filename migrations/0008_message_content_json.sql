-- Content holding NaN or Infinity was once accepted (Python's json writes them);
-- SQLite's json() refuses them, so such a row made every lease of its mailbox
-- fail. Keep the message, with its original text as a JSON string, as a
-- not-understood reply quotes it.
UPDATE messages SET content = json_quote(content) WHERE json_valid(content) = 0;
