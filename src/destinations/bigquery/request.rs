//! The BigQuery v2 REST endpoints koala calls: `tabledata.insertAll`
//! (<https://cloud.google.com/bigquery/docs/reference/rest/v2/tabledata/insertAll>),
//! `tables.insert`
//! (<https://cloud.google.com/bigquery/docs/reference/rest/v2/tables/insert>)
//! and, for `koala check --online`, `tables.get`
//! (<https://cloud.google.com/bigquery/docs/reference/rest/v2/tables/get>).
//! Path segments are percent-encoded; a path in `base_url` is kept.

use url::Url;

#[derive(Debug, Clone)]
pub struct Endpoints {
    /// `…/projects/{p}/datasets/{d}/tables/{t}/insertAll`.
    pub insert_all: Url,
    /// `…/projects/{p}/datasets/{d}/tables` (tables.insert).
    pub tables: Url,
    /// `…/projects/{p}/datasets/{d}/tables/{t}` (tables.get).
    pub table: Url,
}

impl Endpoints {
    pub fn new(base_url: &str, project: &str, dataset: &str, table: &str) -> anyhow::Result<Self> {
        let base = Url::parse(base_url.trim_end_matches('/'))
            .map_err(|_| anyhow::anyhow!("base_url: not a URL"))?;
        let url = |tail: &[&str]| -> anyhow::Result<Url> {
            let mut u = base.clone();
            u.path_segments_mut()
                .map_err(|_| anyhow::anyhow!("base_url: cannot be a base"))?
                .pop_if_empty()
                .extend([
                    "bigquery", "v2", "projects", project, "datasets", dataset, "tables",
                ])
                .extend(tail);
            Ok(u)
        };
        Ok(Endpoints {
            insert_all: url(&[table, "insertAll"])?,
            tables: url(&[])?,
            table: url(&[table])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paths_are_bigquerys() {
        let e = Endpoints::new(
            "https://bigquery.googleapis.com",
            "my-proj",
            "marketing",
            "changes",
        )
        .unwrap();
        assert_eq!(
            e.insert_all.as_str(),
            "https://bigquery.googleapis.com/bigquery/v2/projects/my-proj/datasets/marketing/tables/changes/insertAll"
        );
        assert_eq!(
            e.tables.as_str(),
            "https://bigquery.googleapis.com/bigquery/v2/projects/my-proj/datasets/marketing/tables"
        );
        assert_eq!(
            e.table.as_str(),
            "https://bigquery.googleapis.com/bigquery/v2/projects/my-proj/datasets/marketing/tables/changes"
        );
        let proxied =
            Endpoints::new("http://127.0.0.1:9/proxy/", "example.com:p", "d", "t").unwrap();
        assert_eq!(
            proxied.insert_all.as_str(),
            "http://127.0.0.1:9/proxy/bigquery/v2/projects/example.com:p/datasets/d/tables/t/insertAll"
        );
    }
}
