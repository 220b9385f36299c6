//! A component that does not target the `camp:extension/plugin` world: it
//! exports a single unrelated function. The host must refuse to load it
//! (and keep any previous version running).

wit_bindgen::generate!({
    inline: r#"
        package test:wrong;
        world wrong {
            export run: func() -> string;
        }
    "#,
});

/// The exported type.
struct Wrong;

impl Guest for Wrong {
    fn run() -> String {
        "not a camp plugin".into()
    }
}

export!(Wrong);
