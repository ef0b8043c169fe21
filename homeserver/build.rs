//! Rebuilds when migrations change (they are embedded with `sqlx::migrate!`), and turns on the
//! PostgreSQL variants of the tests when `MYELIN_TEST_POSTGRES_URL` is set, and the S3 media
//! store test when `MYELIN_TEST_S3_ENDPOINT` is.

fn main() {
    println!("cargo::rerun-if-changed=../migrations");
    println!("cargo::rerun-if-env-changed=MYELIN_TEST_POSTGRES_URL");
    println!("cargo::rustc-check-cfg=cfg(myelin_postgres_tests)");
    if std::env::var_os("MYELIN_TEST_POSTGRES_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=myelin_postgres_tests");
    }
    println!("cargo::rerun-if-env-changed=MYELIN_TEST_S3_ENDPOINT");
    println!("cargo::rustc-check-cfg=cfg(myelin_s3_tests)");
    if std::env::var_os("MYELIN_TEST_S3_ENDPOINT").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=myelin_s3_tests");
    }
}
