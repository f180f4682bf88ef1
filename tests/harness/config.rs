//! `pgbridge run` configs as TOML text, built section by section. Shared by
//! the integration tests and the end-to-end benchmark (which includes this
//! file by path), so both describe a run the same way.

use std::path::Path;

/// A config being written: a `[source]` section, then `[[sink]]` sections.
/// Keys added with [`Config::key`] and text added with [`Config::raw`] go
/// into the section written last.
pub struct Config {
    text: String,
}

impl Config {
    /// `[source]` with its connection, slot and publications.
    pub fn source(url: &str, slot: &str, publications: &[&str]) -> Config {
        Config {
            text: format!(
                "[source]\nurl = \"{url}\"\nslot = \"{slot}\"\npublications = [{}]\n",
                quoted_list(publications)
            ),
        }
    }

    /// One `key = value` line; `value` is TOML (quote strings yourself).
    pub fn key(mut self, key: &str, value: impl std::fmt::Display) -> Config {
        self.text.push_str(&format!("{key} = {value}\n"));
        self
    }

    /// TOML text as it is (keys of the current section, further sections).
    pub fn raw(mut self, text: &str) -> Config {
        self.text.push_str(text);
        self
    }

    /// A `[[sink]]` of type `postgres` named `name`, writing to `url`.
    pub fn postgres_sink(mut self, name: &str, url: &str) -> Config {
        self.text.push_str(&format!(
            "\n[[sink]]\nname = \"{name}\"\ntype = \"postgres\"\nurl = \"{url}\"\n"
        ));
        self
    }

    /// A `[[sink]]` of type `kafka` named `name`, producing to `brokers`.
    pub fn kafka_sink(mut self, name: &str, brokers: &str) -> Config {
        self.text.push_str(&format!(
            "\n[[sink]]\nname = \"{name}\"\ntype = \"kafka\"\nbrokers = \"{brokers}\"\n"
        ));
        self
    }

    /// Writes the config to `path`.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        std::fs::write(path, &self.text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// `"a", "b"`: the items of a TOML array of strings.
pub fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ")
}
