//! Carrying out a plan on the node's links through spiderpool-netlink (the code the node daemon's
//! interface tasks use). A failure part way removes the links this invocation created and brings
//! the members it took down back up, so a refused ADD leaves the node as it found it.

use spiderpool_netlink::{Handle, LinkChange, NetlinkError};

use crate::plan::{Observed, Step};

/// Reads the node's links.
pub async fn observe(handle: &Handle) -> Result<Vec<Observed>, NetlinkError> {
    Ok(handle.link_details().await?.iter().map(Observed::from).collect())
}

/// Why one step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The kernel refused it.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A link it needs went away meanwhile.
    #[error("there is no link `{0}` (any more)")]
    NoLink(String),
}

impl StepError {
    /// The link to create was made meanwhile (another ADD on this node).
    pub fn is_exists(&self) -> bool {
        matches!(self, StepError::Netlink(e) if e.is_exists())
    }
}

/// A step that failed, with what was done about the steps before it.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}{undo}")]
pub struct ApplyError {
    /// The step, as shown to the user.
    pub step: String,
    /// Why it failed.
    #[source]
    pub source: StepError,
    /// `; ...` when undoing the earlier steps failed too.
    pub undo: String,
}

/// Carries out `steps` in order; on a failure undoes what this call created.
pub async fn apply(handle: &Handle, steps: &[Step]) -> Result<(), ApplyError> {
    let mut created: Vec<String> = Vec::new();
    let mut taken_down: Vec<String> = Vec::new();
    for step in steps {
        if let Err(source) = apply_one(handle, step, &mut taken_down).await {
            let undo = undo(handle, &created, &taken_down).await;
            return Err(ApplyError {
                step: describe(step),
                source,
                undo,
            });
        }
        if let Some(name) = step.created() {
            created.push(name.to_owned());
        }
    }
    Ok(())
}

async fn apply_one(handle: &Handle, step: &Step, taken_down: &mut Vec<String>) -> Result<(), StepError> {
    match step {
        Step::Up(name) => Ok(handle
            .set_link(index(handle, name).await?, LinkChange::Up)
            .await?),
        Step::CreateBond { name, mode, options } => Ok(handle.create_bond(name, *mode, options).await?),
        Step::Enslave { member, bond } => {
            let member_index = index(handle, member).await?;
            let bond_index = index(handle, bond).await?;
            handle.set_link_down(member_index).await?;
            taken_down.push(member.clone());
            handle.set_master(member_index, bond_index).await?;
            Ok(handle.set_link(member_index, LinkChange::Up).await?)
        }
        Step::CreateVlan { name, parent, id } => Ok(handle
            .create_vlan(name, index(handle, parent).await?, *id)
            .await?),
    }
}

/// Deletes `created` (newest first; a bond's members are released with it) and brings the members
/// taken down back up. Returns what could not be undone, for the error message.
async fn undo(handle: &Handle, created: &[String], taken_down: &[String]) -> String {
    let mut left = Vec::new();
    for name in created.iter().rev() {
        let deleted = match index(handle, name).await {
            Ok(i) => handle.delete_link(i).await.map_err(StepError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = deleted
            && !matches!(&e, StepError::Netlink(n) if n.is_not_found())
        {
            left.push(format!("`{name}` is left: {e}"));
        }
    }
    for name in taken_down {
        let up = match index(handle, name).await {
            Ok(i) => handle.set_link(i, LinkChange::Up).await.map_err(StepError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = up {
            left.push(format!("`{name}` is left down: {e}"));
        }
    }
    if left.is_empty() {
        String::new()
    } else {
        format!("; undoing the earlier steps: {}", left.join("; "))
    }
}

async fn index(handle: &Handle, name: &str) -> Result<u32, StepError> {
    handle
        .link_by_name(name)
        .await?
        .map(|l| l.index)
        .ok_or_else(|| StepError::NoLink(name.to_owned()))
}

/// A step as `ip` would say it.
pub fn describe(step: &Step) -> String {
    match step {
        Step::Up(name) => format!("set {name} up"),
        Step::CreateBond { name, mode, options } => {
            let options: Vec<String> = options.iter().map(ToString::to_string).collect();
            format!(
                "create bond {name} mode {}{}{}",
                spiderpool_netlink::bond::mode_name(*mode),
                if options.is_empty() { "" } else { " " },
                options.join(" ")
            )
        }
        Step::Enslave { member, bond } => format!("enslave {member} to {bond}"),
        Step::CreateVlan { name, parent, id } => format!("create vlan {name} id {id} on {parent}"),
    }
}
