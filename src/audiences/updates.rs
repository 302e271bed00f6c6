//! Which destinations get an attribute update when a current member's
//! profile changes. Analytics, warehouses and webhooks hold attributes,
//! not just membership; they are sent a member again only when something
//! they hold moved. Why not on any change: Customer.io attaches the whole
//! profile to every webhook, and most attributes are never mapped; sending
//! every change would cost a destination row per unrelated attribute edit.
//!
//! Desired vs acknowledged state still decides what is sent: an update
//! makes the row pending again and moves its version, so a crash, a retry
//! or a send in flight with the older values converges like membership.

use std::collections::BTreeSet;

/// What a person's profile changed, by source name: an attribute's name,
/// or `identifiers.email` / `identifiers.phone` / `identifiers.id` (the
/// names a mapping's `from` uses).
pub type ChangedFields = BTreeSet<String>;

/// The identifiers every attribute holder carries beside its mapped
/// fields (its rows and events name the person by them).
const ALWAYS_READ: [&str; 3] = ["identifiers.id", "identifiers.email", "identifiers.phone"];

/// The attribute-holding destinations and what each of them reads.
#[derive(Debug, Clone, Default)]
pub struct AttributeReaders {
    readers: Vec<(String, BTreeSet<String>)>,
}

impl AttributeReaders {
    /// `destinations`: each holder's name and the sources its mappings
    /// read, over all the audiences it syncs.
    pub fn new<I, S>(destinations: I) -> Self
    where
        I: IntoIterator<Item = (String, S)>,
        S: IntoIterator<Item = String>,
    {
        AttributeReaders {
            readers: destinations
                .into_iter()
                .map(|(name, reads)| {
                    let mut reads: BTreeSet<String> = reads.into_iter().collect();
                    reads.extend(ALWAYS_READ.iter().map(|s| s.to_string()));
                    (name, reads)
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.readers.is_empty()
    }

    /// The destinations that hold something in `changed`.
    pub fn readers_of<'a>(&'a self, changed: &'a ChangedFields) -> impl Iterator<Item = &'a str> {
        self.readers
            .iter()
            .filter(|(_, reads)| !reads.is_disjoint(changed))
            .map(|(name, _)| name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed(fields: &[&str]) -> ChangedFields {
        fields.iter().map(|s| s.to_string()).collect()
    }

    fn readers() -> AttributeReaders {
        AttributeReaders::new([
            ("warehouse".to_string(), vec!["lifetime_value".to_string()]),
            ("segment".to_string(), vec!["plan".to_string()]),
            ("webhook".to_string(), Vec::new()),
        ])
    }

    #[test]
    fn only_destinations_that_map_a_changed_attribute_are_updated() {
        let r = readers();
        let set = changed(&["lifetime_value"]);
        assert_eq!(r.readers_of(&set).collect::<Vec<_>>(), ["warehouse"]);
        let set = changed(&["last_page_viewed"]);
        assert_eq!(r.readers_of(&set).count(), 0);
    }

    #[test]
    fn an_identifier_change_updates_every_holder() {
        let r = readers();
        let set = changed(&["identifiers.email"]);
        assert_eq!(
            r.readers_of(&set).collect::<Vec<_>>(),
            ["warehouse", "segment", "webhook"]
        );
    }
}
