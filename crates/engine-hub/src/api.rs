//! Hub API documents: search results and model info, in the JSON shapes the
//! real hub serves (`/api/models` and `/api/models/{repo}/revision/{rev}?blobs=true`).

use serde::{Deserialize, Serialize};

/// Sort order for [`SearchQuery`]; always descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortBy {
    /// Most downloaded first.
    Downloads,
    /// Most liked first.
    Likes,
    /// Most recently modified first.
    Recent,
}

impl SortBy {
    /// The hub's `sort` parameter value.
    pub fn api_key(self) -> &'static str {
        match self {
            SortBy::Downloads => "downloads",
            SortBy::Likes => "likes",
            SortBy::Recent => "lastModified",
        }
    }
}

/// A model search. Empty fields are not sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchQuery {
    /// Free text matched against repo ids.
    pub text: Option<String>,
    /// Only repos of this user or organisation.
    pub author: Option<String>,
    /// Library tag such as `mlx`, `gguf`, `safetensors`, `transformers`.
    pub library: Option<String>,
    /// Pipeline tag such as `text-generation` or `feature-extraction`.
    pub pipeline_tag: Option<String>,
    /// Sort key (descending).
    pub sort: Option<SortBy>,
    /// Most results wanted.
    pub limit: Option<usize>,
}

impl SearchQuery {
    /// Query string for `GET /api/models`.
    pub(crate) fn to_query_string(&self) -> String {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(t) = &self.text {
            q.push(("search", t.clone()));
        }
        if let Some(a) = &self.author {
            q.push(("author", a.clone()));
        }
        if let Some(l) = &self.library {
            // The hub lists the library among a model's tags; `filter` matches tags.
            q.push(("filter", l.clone()));
        }
        if let Some(p) = &self.pipeline_tag {
            q.push(("pipeline_tag", p.clone()));
        }
        if let Some(s) = self.sort {
            q.push(("sort", s.api_key().to_string()));
            q.push(("direction", "-1".to_string()));
        }
        if let Some(l) = self.limit {
            q.push(("limit", l.to_string()));
        }
        q.iter()
            .map(|(k, v)| format!("{k}={}", crate::repo::percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// One search hit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    /// Repo id, `org/name`.
    pub id: String,
    /// Owner, when the id has one.
    #[serde(default)]
    pub author: Option<String>,
    /// Downloads in the last month.
    #[serde(default)]
    pub downloads: u64,
    /// Likes.
    #[serde(default)]
    pub likes: u64,
    /// Tags (library, languages, licence, …).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Pipeline tag.
    #[serde(default)]
    pub pipeline_tag: Option<String>,
    /// Main library.
    #[serde(default)]
    pub library_name: Option<String>,
    /// Last modification time (RFC 3339), when the hub sends it.
    #[serde(default, rename = "lastModified")]
    pub last_modified: Option<String>,
}

/// LFS metadata of a file: the sha256 the downloaded bytes must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LfsInfo {
    /// Lower-case hex sha256 of the content.
    pub sha256: String,
    /// Content size in bytes.
    pub size: u64,
}

/// One file of a repo at a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoFile {
    /// Path in the repo, `/`-separated (as listed; see [`crate::safe_relative_path`]).
    #[serde(rename = "rfilename")]
    pub name: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// Git blob id (sha1): the cache names non-LFS blobs by it.
    #[serde(default, rename = "blobId")]
    pub blob_id: Option<String>,
    /// LFS pointer metadata, for large files.
    #[serde(default)]
    pub lfs: Option<LfsInfo>,
}

impl RepoFile {
    /// Size of the content (LFS size for LFS files).
    pub fn content_size(&self) -> Option<u64> {
        self.lfs.as_ref().map(|l| l.size).or(self.size)
    }

    /// Name of the blob in the cache: the sha256 for LFS files, the git blob
    /// id otherwise — the hub's ETag, as `huggingface_hub` names them.
    pub fn blob_name(&self) -> Option<&str> {
        self.lfs.as_ref().map(|l| l.sha256.as_str()).or(self.blob_id.as_deref())
    }
}

/// Model metadata with its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Repo id.
    pub id: String,
    /// Commit hash the revision resolved to.
    pub sha: String,
    /// Files at that commit.
    #[serde(rename = "siblings", default)]
    pub files: Vec<RepoFile>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Pipeline tag.
    #[serde(default)]
    pub pipeline_tag: Option<String>,
    /// Main library.
    #[serde(default)]
    pub library_name: Option<String>,
    /// Downloads in the last month.
    #[serde(default)]
    pub downloads: u64,
    /// Likes.
    #[serde(default)]
    pub likes: u64,
    /// Last modification time (RFC 3339).
    #[serde(default, rename = "lastModified")]
    pub last_modified: Option<String>,
}

impl ModelInfo {
    /// Sum of the known file sizes.
    pub fn total_size(&self) -> u64 {
        self.files.iter().filter_map(RepoFile::content_size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_shapes() {
        // Trimmed from a real `/api/models/{repo}/revision/main?blobs=true` answer.
        let info: ModelInfo = serde_json::from_str(
            r#"{"_id":"x","id":"org/m","sha":"0123456789abcdef0123456789abcdef01234567","private":false,
            "tags":["mlx","safetensors"],"library_name":"mlx","pipeline_tag":"text-generation","downloads":7,"likes":2,
            "siblings":[{"rfilename":"config.json","blobId":"aa","size":10},
            {"rfilename":"model.safetensors","blobId":"bb","size":20,"lfs":{"sha256":"cc","size":20,"pointerSize":130}}]}"#,
        )
        .unwrap();
        assert_eq!(info.files[0].blob_name(), Some("aa"));
        assert_eq!(info.files[1].blob_name(), Some("cc"));
        assert_eq!(info.total_size(), 30);
        let s: Vec<ModelSummary> = serde_json::from_str(
            r#"[{"_id":"x","id":"org/m","likes":1,"downloads":5,"private":false,"tags":["gguf"],"modelId":"org/m"}]"#,
        )
        .unwrap();
        assert_eq!(s[0].downloads, 5);
    }

    #[test]
    fn query_string() {
        let q = SearchQuery {
            text: Some("llama 3".into()),
            library: Some("mlx".into()),
            sort: Some(SortBy::Recent),
            limit: Some(5),
            ..Default::default()
        };
        assert_eq!(
            q.to_query_string(),
            "search=llama%203&filter=mlx&sort=lastModified&direction=-1&limit=5"
        );
    }
}
