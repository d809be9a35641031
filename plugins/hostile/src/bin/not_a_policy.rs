//! Not a policy: a `wasi:cli/command` component, which the host must refuse as the wrong world.

fn main() {
    println!("not a policy");
}
