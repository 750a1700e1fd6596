//! Names from archives (layer entries, image-layout files) as paths inside
//! a root, cleaned lexically the one way every plugin uses.

/// `name` cleaned as a path inside a root: no empty, `.` or `..`
/// components, never absolute (`..` at the top stays at the top, as in
/// Go's `filepath.Clean("/" + name)`).
pub fn clean(name: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn names_stay_inside_the_root() {
        assert_eq!(clean("../x"), vec!["x"]);
        assert_eq!(clean("/etc/passwd"), vec!["etc", "passwd"]);
        assert_eq!(clean("a/../../b/./c/"), vec!["b", "c"]);
        assert!(clean("/").is_empty());
        assert!(clean("..").is_empty());
    }
}
