;; table-hog: a hostile test plugin for camp-server.
;;
;; HAND-WRITTEN SOURCE, not a build output. It is a WebAssembly *component*
;; in the component-model text format; the host compiles it directly
;; (`Component::new` accepts text through the `wat` crate), so there is no
;; Rust crate for it in this workspace.
;;
;; It targets the `camp:extension/plugin@0.1.0` world
;; (wit/camp-extension.wit): it imports the `types` instance and, from the
;; `host` instance, only the `session` resource (no host function is used),
;; and it exports all 12 functions with the WIT's exact types, laid out the
;; way `wasm-tools component new` lays them out (the world-level
;; `use types.{hook-set, action}` / `use host.{session}` become type imports
;; with `eq` bounds, which the exported signatures refer to).
;;
;; Behaviour:
;;   name              -> "table-hog"
;;   hooks             -> {on-receive-utf8}
;;   on-register       -> ok
;;   on-unregister, session-opened, session-closed -> nothing
;;   before-send-*, on-receive-binary, on-receive-error -> action::pass
;;   on-receive-utf8   -> passes an empty message (so it passes the host's
;;                        trial of each declared hook); on any other text
;;                        grows a funcref table by 1,000,000 elements at a
;;                        time until `table.grow` returns -1 (the host's
;;                        resource limiter refused the growth), then traps
;;                        with `unreachable`. This tests the host's table cap.
;;
;; Canonical ABI notes for the core module below:
;;   * `borrow<session>` arrives as an i32 handle; every hook drops it with
;;     `[resource-drop]session` before returning, because a call that ends
;;     with borrow handles still alive traps.
;;   * `string`, `result<_, string>` and `action` results are returned through
;;     a pointer to a static return area in linear memory.
;;   * `cabi_realloc` is a bump allocator above HEAP_BASE; the post-return
;;     functions reset it, so memory does not accumulate across calls.
;;
;; Check it with: jco parse table-hog.wat -o t.wasm && jco wit t.wasm
(component
  ;; ---- imports, as the `plugin` world requires ----------------------------
  (type $types-ty
    (instance
      (type $hook-set (flags "before-send-utf8" "before-send-binary" "before-send-error"
                             "on-receive-utf8" "on-receive-binary" "on-receive-error"))
      (export "hook-set" (type $hook-set-e (eq $hook-set)))
      (type $bytes (list u8))
      (type $payload (variant (case "utf8" string) (case "binary" $bytes) (case "error" string)))
      (export "payload" (type $payload-e (eq $payload)))
      (type $action (variant (case "pass") (case "replace" $payload-e) (case "drop")))
      (export "action" (type (eq $action)))
      (type $level (enum "trace" "debug" "info" "warn" "error"))
      (export "level" (type (eq $level)))
    )
  )
  (import "camp:extension/types@0.1.0" (instance $types (type $types-ty)))

  (type $host-ty
    (instance
      (export "session" (type (sub resource)))
    )
  )
  (import "camp:extension/host@0.1.0" (instance $host (type $host-ty)))

  ;; world-level `use types.{hook-set, action}; use host.{session};`
  (alias export $types "hook-set" (type $types-hook-set))
  (import "hook-set" (type $hook-set (eq $types-hook-set)))
  (alias export $types "action" (type $types-action))
  (import "action" (type $action (eq $types-action)))
  (alias export $host "session" (type $host-session))
  (import "session" (type $session (eq $host-session)))

  ;; ---- the core module ------------------------------------------------------
  (core module $main
    (import "camp:extension/host@0.1.0" "[resource-drop]session"
      (func $drop-session (param i32)))

    (memory (export "memory") 1)

    ;; The table the hog grows. No maximum: only the host's limiter stops it.
    (table $hog 0 funcref)

    ;; Static layout (all below HEAP_BASE = 1024):
    ;;   8..16   name's return area: (ptr, len) of the string
    ;;   16..28  on-register's return area: result<_, string>, byte 0 = 0 (ok)
    ;;   32..48  hooks' return area: action, byte 0 = 0 (pass)
    ;;   64..73  "table-hog"
    (data (i32.const 8) "\40\00\00\00\09\00\00\00")
    (data (i32.const 64) "table-hog")

    (global $heap (mut i32) (i32.const 1024))

    ;; cabi_realloc(old_ptr, old_size, align, new_size) -> ptr
    (func $realloc (export "cabi_realloc")
      (param $old i32) (param $old-size i32) (param $align i32) (param $size i32)
      (result i32)
      (local $ptr i32) (local $end i64) (local $have i64)
      ;; ptr = align_up(heap, align)
      (local.set $ptr
        (i32.and
          (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get $align))))
      (local.set $end
        (i64.add (i64.extend_i32_u (local.get $ptr)) (i64.extend_i32_u (local.get $size))))
      (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
      (if (i64.gt_u (local.get $end) (local.get $have))
        (then
          (if (i32.eq
                (memory.grow
                  (i32.wrap_i64
                    (i64.shr_u
                      (i64.add (i64.sub (local.get $end) (local.get $have)) (i64.const 65535))
                      (i64.const 16))))
                (i32.const -1))
            (then unreachable))))
      (global.set $heap (i32.wrap_i64 (local.get $end)))
      ;; a real reallocation copies the old contents
      (if (local.get $old)
        (then
          (memory.copy (local.get $ptr) (local.get $old)
            (select (local.get $old-size) (local.get $size)
              (i32.lt_u (local.get $old-size) (local.get $size))))))
      (local.get $ptr))

    ;; post-return for every function that returns through memory: free all.
    (func $reset (param i32)
      (global.set $heap (i32.const 1024)))
    (export "cabi_post_name" (func $reset))
    (export "cabi_post_on-register" (func $reset))
    (export "cabi_post_before-send-utf8" (func $reset))
    (export "cabi_post_before-send-binary" (func $reset))
    (export "cabi_post_before-send-error" (func $reset))
    (export "cabi_post_on-receive-utf8" (func $reset))
    (export "cabi_post_on-receive-binary" (func $reset))
    (export "cabi_post_on-receive-error" (func $reset))

    (func (export "name") (result i32)
      (i32.const 8))

    ;; flags: bit 3 = on-receive-utf8
    (func (export "hooks") (result i32)
      (i32.const 8))

    ;; (config: string) -> result<_, string>: ok
    (func (export "on-register") (param i32 i32) (result i32)
      (i32.store8 (i32.const 16) (i32.const 0))
      (i32.const 16))

    (func (export "on-unregister"))

    (func $session-only (param $session i32)
      (call $drop-session (local.get $session)))
    (export "session-opened" (func $session-only))
    (export "session-closed" (func $session-only))

    ;; (session, ptr, len) -> action::pass
    (func $pass (param $session i32) (param i32 i32) (result i32)
      (call $drop-session (local.get $session))
      (i32.store8 (i32.const 32) (i32.const 0))
      (i32.const 32))
    (export "before-send-utf8" (func $pass))
    (export "before-send-binary" (func $pass))
    (export "before-send-error" (func $pass))
    (export "on-receive-binary" (func $pass))
    (export "on-receive-error" (func $pass))

    ;; The hog: grow the table until the host refuses, then trap (an
    ;; empty message passes).
    (func (export "on-receive-utf8") (param $session i32) (param $ptr i32) (param $len i32) (result i32)
      (if (i32.eqz (local.get $len))
        (then (return (call $pass (local.get $session) (local.get $ptr) (local.get $len)))))
      (call $drop-session (local.get $session))
      (loop $again
        (br_if $again
          (i32.ne
            (table.grow $hog (ref.null func) (i32.const 1000000))
            (i32.const -1))))
      unreachable)
  )

  (core func $drop-session (canon resource.drop $host-session))
  (core instance $host-core
    (export "[resource-drop]session" (func $drop-session)))
  (core instance $m (instantiate $main
    (with "camp:extension/host@0.1.0" (instance $host-core))))

  (alias core export $m "memory" (core memory $memory))
  (alias core export $m "cabi_realloc" (core func $realloc))
  (alias core export $m "name" (core func $core-name))
  (alias core export $m "hooks" (core func $core-hooks))
  (alias core export $m "on-register" (core func $core-on-register))
  (alias core export $m "on-unregister" (core func $core-on-unregister))
  (alias core export $m "session-opened" (core func $core-session-opened))
  (alias core export $m "session-closed" (core func $core-session-closed))
  (alias core export $m "before-send-utf8" (core func $core-before-send-utf8))
  (alias core export $m "before-send-binary" (core func $core-before-send-binary))
  (alias core export $m "before-send-error" (core func $core-before-send-error))
  (alias core export $m "on-receive-utf8" (core func $core-on-receive-utf8))
  (alias core export $m "on-receive-binary" (core func $core-on-receive-binary))
  (alias core export $m "on-receive-error" (core func $core-on-receive-error))
  (alias core export $m "cabi_post_name" (core func $core-cabi_post_name))
  (alias core export $m "cabi_post_on-register" (core func $core-cabi_post_on-register))
  (alias core export $m "cabi_post_before-send-utf8" (core func $core-cabi_post_before-send-utf8))
  (alias core export $m "cabi_post_before-send-binary" (core func $core-cabi_post_before-send-binary))
  (alias core export $m "cabi_post_before-send-error" (core func $core-cabi_post_before-send-error))
  (alias core export $m "cabi_post_on-receive-utf8" (core func $core-cabi_post_on-receive-utf8))
  (alias core export $m "cabi_post_on-receive-binary" (core func $core-cabi_post_on-receive-binary))
  (alias core export $m "cabi_post_on-receive-error" (core func $core-cabi_post_on-receive-error))

  ;; ---- exports, with the WIT's exact function types -------------------------
  (type $session-borrow (borrow $session))
  (type $bytes (list u8))
  (type $register-result (result (error string)))

  (type $name-ty (func (result string)))
  (type $hooks-ty (func (result $hook-set)))
  (type $register-ty (func (param "config" string) (result $register-result)))
  (type $unit-ty (func))
  (type $session-ty (func (param "session" $session-borrow)))
  (type $text-hook-ty
    (func (param "session" $session-borrow) (param "text" string) (result $action)))
  (type $data-hook-ty
    (func (param "session" $session-borrow) (param "data" $bytes) (result $action)))

  (func $name (type $name-ty)
    (canon lift (core func $core-name) (memory $memory) string-encoding=utf8
      (post-return $core-cabi_post_name)))
  (export "name" (func $name))

  (func $hooks (type $hooks-ty)
    (canon lift (core func $core-hooks)))
  (export "hooks" (func $hooks))

  (func $on-register (type $register-ty)
    (canon lift (core func $core-on-register) (memory $memory) (realloc $realloc)
      string-encoding=utf8 (post-return $core-cabi_post_on-register)))
  (export "on-register" (func $on-register))

  (func $on-unregister (type $unit-ty)
    (canon lift (core func $core-on-unregister)))
  (export "on-unregister" (func $on-unregister))

  (func $session-opened (type $session-ty)
    (canon lift (core func $core-session-opened)))
  (export "session-opened" (func $session-opened))

  (func $session-closed (type $session-ty)
    (canon lift (core func $core-session-closed)))
  (export "session-closed" (func $session-closed))

  (func $before-send-utf8 (type $text-hook-ty)
    (canon lift (core func $core-before-send-utf8) (memory $memory) (realloc $realloc)
      string-encoding=utf8 (post-return $core-cabi_post_before-send-utf8)))
  (export "before-send-utf8" (func $before-send-utf8))

  (func $before-send-binary (type $data-hook-ty)
    (canon lift (core func $core-before-send-binary) (memory $memory) (realloc $realloc)
      string-encoding=utf8 (post-return $core-cabi_post_before-send-binary)))
  (export "before-send-binary" (func $before-send-binary))

  (func $before-send-error (type $text-hook-ty)
    (canon lift (core func $core-before-send-error) (memory $memory) (realloc $realloc)
      string-encoding=utf8 (post-return $core-cabi_post_before-send-error)))
  (export "before-send-error" (func $before-send-error))

  (func $on-receive-utf8 (type $text-hook-ty)
    (canon lift (core func $core-on-receive-utf8) (memory $memory) (realloc $realloc)
      string-encoding=utf8 (post-return $core-cabi_post_on-receive-utf8)))
  (export "on-receive-utf8" (func $on-receive-utf8))

  (func $on-receive-binary (type $data-hook-ty)
    (canon lift (core func $core-on-receive-binary) (memory $memory) (realloc $realloc)
      string-encoding=utf8 (post-return $core-cabi_post_on-receive-binary)))
  (export "on-receive-binary" (func $on-receive-binary))

  (func $on-receive-error (type $text-hook-ty)
    (canon lift (core func $core-on-receive-error) (memory $memory) (realloc $realloc)
      string-encoding=utf8 (post-return $core-cabi_post_on-receive-error)))
  (export "on-receive-error" (func $on-receive-error))
)
