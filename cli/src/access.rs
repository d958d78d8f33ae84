//! `deephardway keys` (create, list, revoke API keys: admin keys only) and
//! `deephardway usage` (what each key's jobs used).

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use deephardway::v1::{
    CreateKeyRequest, ListKeysRequest, ListUsageRequest, Quota, RevokeKeyRequest, Role,
    key_service_client::KeyServiceClient, usage_service_client::UsageServiceClient,
};

use crate::client::ServerArg;

#[derive(Args)]
pub struct KeysArgs {
    #[command(flatten)]
    server: ServerArg,
    #[command(subcommand)]
    action: KeysAction,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key and print its secret (shown this once; stdout holds only the secret,
    /// so scripts can capture it).
    Create {
        /// The key's name: letters, digits and `._-`.
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Whose jobs and data the key sees (default: `default`).
        #[arg(long, default_value = "")]
        tenant: String,
        /// Most jobs queued or running at once (0: no limit).
        #[arg(long, default_value_t = 0)]
        max_active_jobs: u32,
        /// Most submissions per second, sustained (0: no limit).
        #[arg(long, default_value_t = 0.0)]
        submits_per_second: f64,
        /// Submissions allowed at once above the rate (0: one second's worth).
        #[arg(long, default_value_t = 0)]
        submit_burst: u32,
        /// Most jobs running at once; more wait in line (0: no limit).
        #[arg(long, default_value_t = 0)]
        max_running_jobs: u32,
    },
    /// List the keys (never their secrets).
    List {
        /// Only this tenant's keys.
        #[arg(long, default_value = "")]
        tenant: String,
    },
    /// Revoke a key: every replica refuses it within seconds, open streams included.
    Revoke { name: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Admin,
    Submitter,
    Viewer,
    Worker,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Admin => Role::Admin,
            RoleArg::Submitter => Role::Submitter,
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Worker => Role::Worker,
        }
    }
}

fn role_name(role: i32) -> String {
    Role::try_from(role).map_or("unknown".into(), |r| r.as_str_name().trim_start_matches("ROLE_").to_lowercase())
}

pub async fn keys(args: KeysArgs) -> anyhow::Result<ExitCode> {
    let mut client = KeyServiceClient::new(args.server.channel().await?);
    match args.action {
        KeysAction::Create {
            name,
            role,
            tenant,
            max_active_jobs,
            submits_per_second,
            submit_burst,
            max_running_jobs,
        } => {
            let quota = Quota { max_active_jobs, submits_per_second, submit_burst, max_running_jobs };
            let request = CreateKeyRequest { name, role: Role::from(role) as i32, tenant, quota: Some(quota) };
            let created = client.create_key(request).await?.into_inner();
            let key = created.key.unwrap_or_default();
            eprintln!(
                "created {} key {:?} for tenant {:?}; its secret (shown only now):",
                role_name(key.role),
                key.name,
                key.tenant
            );
            println!("{}", created.secret);
        }
        KeysAction::List { tenant } => {
            let keys = client.list_keys(ListKeysRequest { tenant }).await?.into_inner().keys;
            println!("{:<24} {:<10} {:<16} {:<32} CREATOR", "NAME", "ROLE", "TENANT", "QUOTA");
            for key in keys {
                let q = key.quota.unwrap_or_default();
                let quota = format!(
                    "active {} running {} rate {}/s",
                    limit(q.max_active_jobs as f64),
                    limit(q.max_running_jobs as f64),
                    limit(q.submits_per_second)
                );
                println!(
                    "{:<24} {:<10} {:<16} {:<32} {}",
                    key.name,
                    role_name(key.role),
                    key.tenant,
                    quota,
                    key.creator
                );
            }
        }
        KeysAction::Revoke { name } => {
            client.revoke_key(RevokeKeyRequest { name: name.clone() }).await?;
            eprintln!("revoked {name:?}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn limit(value: f64) -> String {
    if value == 0.0 { "-".into() } else { value.to_string() }
}

#[derive(Args)]
pub struct UsageArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Only this tenant (admins; others see their own tenant).
    #[arg(long, default_value = "")]
    tenant: String,
}

pub async fn usage(args: UsageArgs) -> anyhow::Result<ExitCode> {
    let mut client = UsageServiceClient::new(args.server.channel().await?);
    let usage = client.list_usage(ListUsageRequest { tenant: args.tenant }).await?.into_inner().usage;
    println!(
        "{:<16} {:<20} {:>7} {:>10} {:>10} {:>8} {:>8} {:>12} {:>10}",
        "TENANT", "KEY", "JOBS", "PROMPT", "GENERATED", "EMBEDDED", "IMAGES", "IMAGE-EPOCHS", "WORKER-S"
    );
    for u in &usage {
        let jobs: u64 = u.jobs.values().sum();
        println!(
            "{:<16} {:<20} {:>7} {:>10} {:>10} {:>8} {:>8} {:>12} {:>10.1}",
            u.tenant,
            u.key,
            jobs,
            u.prompt_tokens,
            u.generated_tokens,
            u.embedded_texts,
            u.classified_images,
            u.training_image_epochs,
            u.worker_seconds
        );
        let mut outcomes: Vec<_> = u.jobs.iter().collect();
        outcomes.sort();
        let outcomes: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("{:<16} {}", "", outcomes.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}
