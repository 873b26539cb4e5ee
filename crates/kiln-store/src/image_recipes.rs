//! Image recipes added with `kiln image add` (issue 12), stored as JSON by
//! name (`image_recipes`). The master checks a recipe before storing it.

use rusqlite::{params, Connection};

use crate::Result;

/// One stored recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecipe {
    pub name: String,
    /// The recipe, JSON.
    pub recipe: String,
    pub who: Option<String>,
    pub created_at: i64,
}

/// Every stored recipe, by name.
pub fn list(c: &Connection) -> Result<Vec<StoredRecipe>> {
    let mut stmt =
        c.prepare_cached("SELECT name, recipe, who, created_at FROM image_recipes ORDER BY name")?;
    let rows = stmt.query_map([], |r| {
        Ok(StoredRecipe {
            name: r.get(0)?,
            recipe: r.get(1)?,
            who: r.get(2)?,
            created_at: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Store a recipe; false if one of that name is already stored.
pub fn add(c: &Connection, r: &StoredRecipe) -> Result<bool> {
    let n = c
        .prepare_cached(
            "INSERT OR IGNORE INTO image_recipes (name, recipe, who, created_at) \
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![r.name, r.recipe, r.who, r.created_at])?;
    Ok(n == 1)
}

/// Remove a stored recipe; false if there was none of that name.
pub fn remove(c: &Connection, name: &str) -> Result<bool> {
    let n = c
        .prepare_cached("DELETE FROM image_recipes WHERE name = ?1")?
        .execute([name])?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_are_added_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("k.db")).unwrap();
        crate::schema::migrate(&mut c).unwrap();
        let r = StoredRecipe {
            name: "img".into(),
            recipe: "{}".into(),
            who: Some("admin".into()),
            created_at: 5,
        };
        assert!(add(&c, &r).unwrap());
        assert!(!add(&c, &r).unwrap(), "a name twice");
        assert_eq!(list(&c).unwrap(), vec![r]);
        assert!(remove(&c, "img").unwrap());
        assert!(!remove(&c, "img").unwrap());
        assert!(list(&c).unwrap().is_empty());
    }
}
